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
    _fake(runs, {("plain", 0): (0.10, 0.20), ("plain", 1): (0.12, 0.22), ("safe-pll-step", 0): (0.04, 0.19)})
    assert [r.done for r in runs] == [True, True, True, False]
    sweep.run_all([r for r in runs if r.done], parallel=1)    # nothing to train
    sweep.summary(runs, tmp_path / "summary.md")
    text = (tmp_path / "summary.md").read_text()
    assert "3 of 4 planned runs finished" in text
    assert "| plain | 2 | 0.110 ± 0.014 | 0.210 ± 0.014 |" in text
    row = next(x for x in text.splitlines() if x.startswith("| safe-pll-step "))
    assert "| 0.36 | 0.90 | -0.060 (1) | yes | met |" in row   # 0.04 / 0.11, 0.19 / 0.21; 0.04 - 0.10 paired


def _fake(runs, values):
    for r in runs:
        if (r.variant, r.seed) in values:
            r.out.mkdir(parents=True)
            f, g = values[(r.variant, r.seed)]
            (r.out / "summary.json").write_text(json.dumps({"forgetting": f, "target_gain_mean": g, "worst": 0.2,
                                                            "avg": 0.3}))


def test_select_applies_the_fixed_rule_by_hand(tmp_path, capsys):
    runs = sweep.plan(_args(tmp_path, methods="plain,safe,ewc,l2sp", orders="grr", seeds="0",
                            strength=["safe=pll-phase-0.02,pll-phase-0.02-r5,pll-phase-0.005,pll-step",
                                      "ewc=10,100,1000", "l2sp=0.1,1"]))
    _fake(runs, {("plain", 0): (0.10, 0.20),
                 ("safe-pll-phase-0.02", 0): (0.030, 0.19),
                 ("safe-pll-phase-0.02-r5", 0): (0.033, 0.185),   # within 0.005 of the best kept: cheaper wins
                 ("safe-pll-phase-0.005", 0): (0.010, 0.15),      # below 0.8 x 0.20 = 0.16: not kept
                 ("ewc-10", 0): (0.05, 0.20), ("ewc-100", 0): (0.02, 0.17), ("ewc-1000", 0): (0.0, 0.10),
                 ("l2sp-0.1", 0): (0.0, 0.12), ("l2sp-1", 0): (0.0, 0.05)})   # none kept: the highest gain
    # safe-pll-step has no finished run: left out, not selected
    assert sweep.select(runs) == {"safe": "safe-pll-phase-0.02-r5", "ewc": "ewc-100", "l2sp": "l2sp-0.1"}
    assert "left out (not every run finished): safe-pll-step" in capsys.readouterr().out


def test_mixed_order_is_one_phase_as_long_as_the_sequence(tmp_path):
    (r,) = sweep.plan(_args(tmp_path, methods="plain", orders="mixed", seeds="0", profile="tiny"))
    i = r.args.index("protocol.kind=mixed")
    assert r.args[i + 1] == "protocol.steps_per_phase=30" and "protocol.steps_per_phase=10" in r.args[:i]
    from retainrl.config import load_config
    from retainrl.train.config import RunConfig
    cfg = load_config(RunConfig, ROOT / r.args[0], r.args[1:r.args.index("--out")])   # the later override wins
    assert cfg.protocol.kind == "mixed" and cfg.protocol.steps_per_phase == 30


def test_later_phase_gain_leaves_out_the_first_phase():
    assert sweep.later_gain({"target_gain": [0.2, 0.1, 0.3]}) == 0.2
    assert sweep.later_gain({"target_gain": [0.2]}) is None and sweep.later_gain({}) is None


def test_mixed_runs_without_forgetting_are_summarised(tmp_path, capsys):
    runs = sweep.plan(_args(tmp_path, methods="plain", orders="mixed", seeds="0", profile="tiny"))
    runs[0].out.mkdir(parents=True)
    (runs[0].out / "summary.json").write_text(json.dumps({"forgetting": None, "target_gain_mean": 0.15,
                                                          "target_gain": [0.15], "worst": 0.2, "avg": 0.36}))
    sweep.run_all(runs, parallel=1)                  # finished: nothing to train, no crash on the None
    sweep.summary(runs, None)
    assert "| plain | 1 | - | 0.150 | - | 0.200 | 0.360 |" in capsys.readouterr().out


def test_softmin_methods_plan_mixed_runs_only(tmp_path):
    runs = sweep.plan(_args(tmp_path, methods="softmin,safe+softmin", orders="mixed"))
    sweep.validate(runs)
    assert {r.variant for r in runs} == {"softmin-0.05", "softmin-0.2", "safe+softmin-0.05", "safe+softmin-0.2"}
    r = next(r for r in runs if r.variant == "safe+softmin-0.05")
    assert {"protocol.kind=mixed", "protocol.skill_weighting=softmin", "protocol.softmin_temperature=0.05",
            "safety.enabled=true", "safety.constraint=prompt_ll"} <= set(r.args)
    assert "safety.enabled=true" not in next(r for r in runs if r.variant == "softmin-0.2").args
    try:  # one skill per phase: the weighting would do nothing, and the runs would repeat plain's
        sweep.plan(_args(tmp_path, methods="plain,softmin", orders="grr"))
    except SystemExit as e:
        assert "--orders mixed" in str(e)
    else:
        raise AssertionError("softmin planned for a sequential order")


def test_safe_with_a_penalty_baseline_plans_both(tmp_path):
    runs = sweep.plan(_args(tmp_path, methods="safe+ewc,safe+l2sp", orders="grr", seeds="0"))
    sweep.validate(runs)
    by = {r.variant: set(r.args) for r in runs}
    assert set(by) == {"safe+ewc-10", "safe+ewc-100", "safe+l2sp-0.01", "safe+l2sp-0.03"}
    assert {"safety.enabled=true", "safety.budget=phase", "safety.eps=0.02", "method.name=ewc",
            "method.ewc_lambda=100"} <= by["safe+ewc-100"]
    assert {"method.name=l2sp", "method.l2sp_lambda=0.01", "safety.enabled=true"} <= by["safe+l2sp-0.01"]
