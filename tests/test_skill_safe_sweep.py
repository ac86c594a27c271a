"""The issue-12 comparison runner (benchmarks/skill_safe_v2_sweep.py): the Pareto check by hand, every
planned run's config builds, finished runs are skipped, and the summary table from fake summaries."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("skill_safe_v2_sweep", ROOT / "benchmarks" / "skill_safe_v2_sweep.py")
sweep = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sweep   # dataclasses look their module up
spec.loader.exec_module(sweep)


def _args(tmp_path, **kw):
    a = dict(methods="plain,kl,replay,ewc,l2sp,safe,safe+replay", strength=[], seeds="0,1", orders="grr,rrg",
             world_seeds="0", profile="small", model="", set=[], root=str(tmp_path))
    a.update(kw)
    return SimpleNamespace(**a)


def test_pareto_by_hand():
    # (forgetting, gain): b dominates d (less forgetting, more gain); a and c trade off; e ties a on both
    pts = {"a": (0.10, 0.20), "b": (0.05, 0.15), "c": (0.01, 0.05), "d": (0.06, 0.10), "e": (0.10, 0.20)}
    assert sweep.pareto(pts) == {"a", "b", "c", "e"}


def test_every_planned_config_builds_and_strengths_are_at_least_three(tmp_path):
    runs = sweep.plan(_args(tmp_path))
    sweep.validate(runs)                           # raises SystemExit on a bad key or value
    names = {r.variant for r in runs}
    for m in ("kl", "replay", "ewc", "l2sp"):
        assert len([n for n in names if n.startswith(m + "-")]) >= 3, m
    assert "plain" in names and any(n.startswith("safe+replay-") for n in names)
    assert len(runs) == len(names) * 2 * 2          # x seeds x orders
    r = next(r for r in runs if r.variant == "safe-trust-0.0002" and r.order == "rrg")
    assert "protocol.phases=[reason,repair,gen]" in r.args and "safety.trust_region=0.0002" in r.args


def test_finished_runs_are_skipped_and_summarised(tmp_path, capsys):
    runs = sweep.plan(_args(tmp_path, methods="plain,safe", strength=["safe=pll-step"], orders="grr"))
    fake = {("plain", 0): (0.10, 0.20), ("plain", 1): (0.12, 0.22), ("safe-pll-step", 0): (0.04, 0.19)}
    for r in runs:
        if (r.variant, r.seed) in fake:
            r.out.mkdir(parents=True)
            f, g = fake[(r.variant, r.seed)]
            (r.out / "summary.json").write_text(json.dumps({"forgetting": f, "target_gain_mean": g, "worst": 0.2,
                                                            "avg": 0.3}))
    assert [r.done for r in runs] == [True, True, True, False]
    sweep.run_all([r for r in runs if r.done], parallel=1)    # nothing to train
    sweep.summary(runs, tmp_path / "summary.md")
    text = (tmp_path / "summary.md").read_text()
    assert "3 of 4 planned runs finished" in text
    assert "| plain | 2 | 0.110 ± 0.014 | 0.210 ± 0.014 |" in text
    row = next(x for x in text.splitlines() if x.startswith("| safe-pll-step "))
    assert "| 0.36 | 0.90 | yes | met |" in row           # 0.04 / 0.11, 0.19 / 0.21
