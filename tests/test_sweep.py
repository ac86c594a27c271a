"""`retainrl sweep` without training: grid expansion and labels, bad keys failing before any run,
resume skipping finished runs, the parallel scheduler, and the aggregate of hand-made runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from retainrl.config import ConfigError, dump_yaml
from retainrl.metrics.retention import summarize
from retainrl.train import sweep as sw

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
SKILLS = ["gen", "repair", "reason"]


def fake_summary(avg_shift: float, seed: int, method: str = "plain") -> dict:
    """A summary.json for R = base + shift: every metric follows from R (see docs/METRICS.md)."""
    R = [[0.1, 0.1, 0.1], [0.5, 0.1, 0.1], [0.4, 0.6, 0.1], [0.3 + avg_shift, 0.5, 0.7]]
    s = summarize(SKILLS, SKILLS, R, curves=[[r[j] for r in R] for j in range(3)])
    s.update({"tokens_generated": 1000 + 100 * seed, "verifier_cpu_s": 2.0 + seed, "method": method,
              "seed": seed, "steps": 6, "algo": "grpo", "protocol": "sequential"})
    return s


@pytest.fixture()
def fake_trainer(monkeypatch):
    """Replace in-process training: write config.yaml and a fake summary.json, record the call."""
    calls = []

    def train(run):
        calls.append((run.label, run.seed))
        dump_yaml(run.cfg, run.run_dir / "config.yaml")
        (run.run_dir / "summary.json").write_text(json.dumps(fake_summary(0.1 * run.seed, run.seed, run.cfg.method.name)))
    monkeypatch.setattr(sw, "_train_here", train)
    return calls


# ----------------------------------------------------------------------------- grid


def test_parse_grid_splits_outside_brackets():
    grid = sw.parse_grid(["method.name=plain,replay", "protocol.phases=[gen,repair],[repair,gen]"])
    assert grid == {"method.name": ["plain", "replay"], "protocol.phases": ["[gen,repair]", "[repair,gen]"]}
    assert sw.parse_grid({"rl.kl_coef": [0, 0.05]}) == {"rl.kl_coef": ["0", "0.05"]}


@pytest.mark.parametrize("spec, match", [(["method.name"], "key=v1,v2"), (["a=1", "a=2"], "given twice"),
                                         (["seed=0,1"], "--seeds"), (["rl.lr=1e-3,1e-3"], "repeated"),
                                         (["rl.lr=1e-3,"], "empty")])
def test_parse_grid_rejects(spec, match):
    with pytest.raises(ConfigError, match=match):
        sw.parse_grid(spec)


def test_expand_grid_is_the_cartesian_product_first_key_slowest():
    points = sw.expand_grid({"method.name": ["plain", "replay", "ewc"], "rl.kl_coef": ["0", "0.05"]})
    assert len(points) == 3 * 2
    assert points[:3] == [["method.name=plain", "rl.kl_coef=0"], ["method.name=plain", "rl.kl_coef=0.05"],
                          ["method.name=replay", "rl.kl_coef=0"]]
    assert sw.expand_grid({}) == [[]]


def test_labels_are_folder_safe():
    assert sw.point_label(["method.name=replay", "rl.kl_coef=0.05"]) == "method.name=replay,rl.kl_coef=0.05"
    assert sw.point_label(["protocol.phases=[gen, repair]"]) == "protocol.phases=_gen,_repair_"
    assert sw.point_label(["model.name_or_path=/a/b"]) == "model.name_or_path=_a_b"
    assert sw.point_label([]) == "base"


def test_plan_builds_each_runs_config(tmp_path):
    runs = sw.plan_sweep(SMOKE, ["rl.lr=0.001"], "0,1", ["method.name=plain,replay", "rl.kl_coef=0,0.05"], tmp_path)
    assert len(runs) == 2 * 2 * 2
    r = runs[3]  # plain, kl 0.05, seed 1
    assert (r.label, r.seed) == ("method.name=plain,rl.kl_coef=0.05", 1)
    assert r.run_dir == tmp_path / "method.name=plain,rl.kl_coef=0.05" / "seed1"
    assert (r.cfg.seed, r.cfg.rl.kl_coef, r.cfg.rl.lr, r.cfg.method.name) == (1, 0.05, 0.001, "plain")
    assert r.overrides == ["rl.lr=0.001", "method.name=plain", "rl.kl_coef=0.05", "seed=1"]


# ----------------------------------------------------------------------------- bad keys fail first


@pytest.mark.parametrize("grid, key", [(["rl.klcoef=0,0.05"], "rl.klcoef"), (["method.name=plain,bogus"], "method.name"),
                                       (["rl.lr=0.01,-1"], "rl.lr"), (["nosuch.section=1"], "nosuch")])
def test_invalid_grid_fails_before_any_run(tmp_path, fake_trainer, grid, key):
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError) as e:
        sw.run_sweep(SMOKE, [], "0,1", ["rl.kl_coef=0,0.05", *grid], out, parallel=1)
    assert e.value.key == key and key in str(e.value)
    assert fake_trainer == [] and not out.exists()


def test_cli_main_reports_config_errors(tmp_path, capsys):
    assert sw.main([str(SMOKE), "--grid", "rl.klcoef=0,1", "--out", str(tmp_path / "s")]) == 2
    assert "rl.klcoef" in capsys.readouterr().err


# ----------------------------------------------------------------------------- running and resuming


def test_sweep_trains_every_run_then_resume_skips_them(tmp_path, fake_trainer):
    out = tmp_path / "sweep"
    finished = out / "method.name=replay" / "seed1"  # as if a killed sweep had finished this one
    pre = sw.plan_sweep(SMOKE, [], "0,1", ["method.name=plain,replay"], out)
    run = next(r for r in pre if r.run_dir == finished)
    finished.mkdir(parents=True)
    dump_yaml(run.cfg, finished / "config.yaml")
    (finished / "summary.json").write_text(json.dumps(fake_summary(0.1, 1, "replay")))

    assert sw.run_sweep(SMOKE, [], "0,1", ["method.name=plain,replay"], out) == out
    assert sorted(fake_trainer) == [("method.name=plain", 0), ("method.name=plain", 1), ("method.name=replay", 0)]
    meta = json.loads((out / "sweep.json").read_text())
    assert meta["grid"] == {"method.name": ["plain", "replay"]} and meta["seeds"] == [0, 1]
    assert meta["points"][1]["runs"] == ["method.name=replay/seed0", "method.name=replay/seed1"]
    assert set(meta["runs"].values()) == {"done"}

    fake_trainer.clear()
    sw.run_sweep(SMOKE, [], "0,1", ["method.name=plain,replay"], out)
    assert fake_trainer == []  # everything finished: nothing retrained


def test_resume_refuses_a_folder_with_another_config(tmp_path, fake_trainer):
    out = tmp_path / "sweep"
    sw.run_sweep(SMOKE, [], "0", ["method.name=plain"], out)
    with pytest.raises(ConfigError, match="different config"):
        sw.run_sweep(SMOKE, ["rl.lr=0.5"], "0", ["method.name=plain"], out)


def test_a_failed_run_is_reported_after_the_others(tmp_path, monkeypatch):
    def train(run):
        if run.seed == 1:
            raise RuntimeError("boom")
        (run.run_dir / "summary.json").write_text(json.dumps(fake_summary(0.0, run.seed)))
    monkeypatch.setattr(sw, "_train_here", train)
    out = tmp_path / "sweep"
    with pytest.raises(sw.SweepError, match="1 of 3 runs failed"):
        sw.run_sweep(SMOKE, [], "0,1,2", [], out)
    assert "boom" in (out / "base" / "seed1" / "error.txt").read_text()
    agg = json.loads((out / "aggregate.json").read_text())
    assert agg["points"][0]["n_runs"] == 2 and agg["points"][0]["metrics"]["avg"]["n"] == 2


def test_parallel_scheduler_runs_subprocesses(tmp_path, monkeypatch):
    """--parallel N: N processes at a time; here each one writes a fake summary instead of training."""
    script = ("import json, sys, pathlib; d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True, exist_ok=True); "
              "(d / 'summary.json').write_text(sys.argv[2]); print('fake train', d)")

    def command(config_path, run):
        return [sys.executable, "-c", script, str(run.run_dir), json.dumps(fake_summary(0.1 * run.seed, run.seed))]
    monkeypatch.setattr(sw, "_train_command", command)
    out = tmp_path / "sweep"
    sw.run_sweep(SMOKE, [], "0,1", ["method.name=plain,ewc"], out, parallel=2)
    for label in ("method.name=plain", "method.name=ewc"):
        for seed in (0, 1):
            assert (out / label / f"seed{seed}" / "summary.json").exists()
            assert "fake train" in (out / label / f"seed{seed}" / "train.log").read_text()


def test_train_command_is_the_train_cli(tmp_path):
    run = sw.plan_sweep(SMOKE, ["rl.lr=0.001"], "3", ["method.name=replay"], tmp_path)[0]
    cmd = sw._train_command(SMOKE, run)
    assert cmd[1:5] == ["-m", "retainrl", "train", str(SMOKE)]
    assert cmd[5:-2] == ["rl.lr=0.001", "method.name=replay", "seed=3"]
    assert cmd[-2:] == ["--out", str(run.run_dir.resolve())]


# ----------------------------------------------------------------------------- aggregate


def test_aggregate_of_hand_made_runs(tmp_path):
    # plain: final gen = 0.3 + shift with shift 0.0 / 0.2, so avg = (0.3 + 0.5 + 0.7) / 3 = 0.5 and
    # (0.5 + 0.5 + 0.7) / 3 = 0.5667: mean 0.5333, sample std |0.0667| / sqrt(2) = 0.04714.
    for seed, shift in ((0, 0.0), (1, 0.2)):
        d = tmp_path / "method.name=plain" / f"seed{seed}"
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(fake_summary(shift, seed)))
    points = [{"label": "method.name=plain", "assignments": ["method.name=plain"],
               "runs": ["method.name=plain/seed0", "method.name=plain/seed1", "method.name=plain/seed2"]}]
    result = sw.write_aggregate(tmp_path, points)
    p = result["points"][0]
    assert p["n_runs"] == 2 and p["runs"] == ["method.name=plain/seed0", "method.name=plain/seed1"]
    m = p["metrics"]
    assert m["avg"]["mean"] == pytest.approx(0.53333, abs=1e-5)
    assert m["avg"]["std"] == pytest.approx(0.04714, abs=1e-5)
    assert (m["avg"]["min"], m["avg"]["max"], m["avg"]["n"]) == (pytest.approx(0.5), pytest.approx(0.56667, abs=1e-5), 2)
    # forgetting over gen, repair: gen best 0.5 -> final 0.3 / 0.5 (0.2 / 0.0), repair 0.6 -> 0.5 (0.1)
    assert m["forgetting"]["mean"] == pytest.approx((0.15 + 0.05) / 2)
    assert m["target_gain/1"]["mean"] == pytest.approx(0.4) and m["target_gain/3"]["mean"] == pytest.approx(0.6)
    assert m["tokens_generated"] == {"mean": 1050.0, "std": pytest.approx(70.7107, abs=1e-4), "min": 1000.0,
                                     "max": 1100.0, "n": 2}
    assert list(m)[:7] == ["avg", "worst", "forgetting", "bwt", "fwt", "max_drop", "oscillation"]
    assert list(m)[-2:] == ["tokens_generated", "verifier_cpu_s"]
    assert json.loads((tmp_path / "aggregate.json").read_text()) == json.loads(json.dumps(result))
    md = (tmp_path / "aggregate.md").read_text()
    assert "| method.name=plain | 2 | 0.533 ± 0.047 |" in md and "## method.name=plain" in md
