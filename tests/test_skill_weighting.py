"""The softmin skill weighting of multi-skill phases (train/sampler.py): hand-computed weights,
invariances, the estimates' bookkeeping, config errors, and a tiny mixed run whose logged
weights are recomputed from its logged rewards and survive a kill and resume."""

from __future__ import annotations

import json
import math

import pytest

from retainrl.config import ConfigError, load_config
from retainrl.train.config import RunConfig
from retainrl.train.sampler import SkillFocus, softmin_weights
from tests.test_train_e2e import FAST, SMOKE, _finish, _kill_when, _lines, _stable, _train


def test_softmin_weights_hand_computed():
    # r = (0.1, 0.3), tau 0.1: softmin (1, e^-2) / (1 + e^-2) = (0.8808, 0.1192); a fixed share 0.2 of
    # the prompts split evenly: q = 0.1 + 0.8 * p
    q = softmin_weights({"a": 0.1, "b": 0.3}, {"a": 1.0, "b": 1.0}, temperature=0.1, fixed_share=0.2)
    e = math.exp(-2)
    assert q["a"] == pytest.approx(0.1 + 0.8 / (1 + e)) and q["a"] == pytest.approx(0.80464, abs=1e-5)
    assert q["b"] == pytest.approx(0.1 + 0.8 * e / (1 + e))
    # base weights multiply inside the softmin: w = (1, 3) at equal rewards gives (1/4, 3/4), no fixed share
    assert softmin_weights({"a": 0.2, "b": 0.2}, {"a": 1.0, "b": 3.0}, 0.1, 0.0) == pytest.approx({"a": 0.25, "b": 0.75})


def test_softmin_weights_invariances_and_limits():
    est, base = {"a": 0.05, "b": 0.4, "c": 0.2}, {"a": 1.0, "b": 1.0, "c": 2.0}
    q = softmin_weights(est, base, 0.1, 0.2)
    assert sum(q.values()) == pytest.approx(1.0) and min(q.values()) >= 0.2 * 0.25 - 1e-12  # lam * w_s
    assert q["a"] > q["c"] > q["b"]  # lower reward, more prompts (c's weight 2 does not outweigh e^-1.5)
    shifted = softmin_weights({k: v + 0.3 for k, v in est.items()}, base, 0.1, 0.2)
    assert shifted == pytest.approx(q)  # only reward differences matter
    for lam in (0.0, 0.3):  # tau -> inf: the fixed weights, normalised, whatever the fixed share
        assert softmin_weights(est, base, 1e6, lam) == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5}, abs=1e-5)
    assert softmin_weights(est, base, 0.1, 1.0) == pytest.approx({"a": 0.25, "b": 0.25, "c": 0.5})  # lam = 1 too
    sharp = softmin_weights(est, base, 1e-3, 0.4)  # tau -> 0: all but the fixed share to the worst skill
    assert sharp == pytest.approx({"a": 0.6 + 0.1, "b": 0.1, "c": 0.2}, abs=1e-6)
    zero = softmin_weights(est, {"a": 0.0, "b": 1.0, "c": 1.0}, 0.1, 0.3)  # weight 0: never drawn
    assert zero["a"] == 0.0 and zero["b"] + zero["c"] == pytest.approx(1.0) and zero["c"] > zero["b"]
    with pytest.raises(ValueError, match="fixed_share"):
        softmin_weights(est, base, 0.1, 1.5)


def test_skill_focus_estimates_and_state():
    f = SkillFocus(temperature=0.1, ema=0.5, fixed_share=0.0)
    base = {"gen": 1.0, "reason": 3.0}
    assert f.weights(["gen", "reason"], base) == {"gen": 0.25, "reason": 0.75}  # none seen: the fixed weights
    f.observe({"gen": 0.4})
    assert f.weights(["gen", "reason"], base) == {"gen": 0.25, "reason": 0.75}  # reason not seen yet
    f.observe({"gen": 0.2, "reason": 0.0})
    assert f.estimates == {"gen": pytest.approx(0.3), "reason": 0.0}  # 0.5 * 0.4 + 0.5 * 0.2; first value as is
    q = f.weights(["gen", "reason"], base)
    assert q["reason"] == pytest.approx(3 / (3 + math.exp(-3)))
    assert f.weights(["gen"], base) == {"gen": 1.0}  # one skill: nothing to share
    g = SkillFocus(0.1, 0.5, 0.0)
    g.load_state(f.state())
    assert g.weights(["gen", "reason"], base) == q
    for bad in ([0.1], {"gen": float("nan")}, {"gen": "x"}):
        with pytest.raises(ValueError, match="skill-weighting estimates"):
            g.load_state(bad)


def test_config_rejects_bad_settings_and_warns_when_idle():
    for bad, key in (("protocol.softmin_temperature=0", "softmin_temperature"), ("protocol.softmin_ema=0", "softmin_ema"),
                     ("protocol.softmin_fixed_share=1.5", "softmin_fixed_share"),
                     ("protocol.skill_weighting=worst", "skill_weighting")):
        with pytest.raises(ConfigError, match=key):
            load_config(RunConfig, SMOKE, ["protocol.kind=mixed", bad])
    with pytest.warns(UserWarning, match="does nothing"):
        load_config(RunConfig, SMOKE, ["protocol.skill_weighting=softmin"])  # sequential, one skill per phase
    with pytest.warns(UserWarning, match="does nothing"):  # mixed, but only one skill with a weight
        load_config(RunConfig, SMOKE, ["protocol.kind=mixed", "protocol.skill_weighting=softmin",
                                       "protocol.mixed_weights={gen: 0, repair: 0}"])


MIXED = [*FAST, "protocol.kind=mixed", "protocol.steps_per_phase=5", "protocol.skill_weighting=softmin",
         "protocol.softmin_temperature=0.05", "protocol.softmin_ema=0.5", "protocol.softmin_fixed_share=0.3"]


def test_mixed_run_draws_by_its_logged_rewards_and_resumes_identically(tmp_path):
    straight = tmp_path / "straight"
    _finish(_train(straight, *MIXED))
    train = [r for r in _lines(straight / "metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 5
    skills = ["gen", "repair", "reason"]
    # the trainer's weights, recomputed from the rewards it logged: the wiring is the formula
    est: dict[str, float] = {}
    for r in train:
        got = {s: r[f"focus/weight/{s}"] for s in skills}
        if len(est) < 3:
            assert got == pytest.approx({s: 1 / 3 for s in skills})
        else:
            assert got == pytest.approx(softmin_weights(est, {s: 1.0 for s in skills}, 0.05, 0.3))
        for s in skills:
            if f"reward/{s}" in r:
                est[s] = r[f"reward/{s}"] if s not in est else 0.5 * est[s] + 0.5 * r[f"reward/{s}"]
    assert any(abs(r["focus/weight/gen"] - 1 / 3) > 0.01 for r in train), "the weighting never left the fixed weights"
    # kill -9 after two steps, rerun: the estimates come back from the checkpoint, so the draws match
    resumed = tmp_path / "resumed"
    _kill_when(resumed, MIXED, lambda lines: sum('"kind": "train"' in x for x in lines) >= 3)
    _finish(_train(resumed, *MIXED))
    assert _stable(_lines(resumed / "metrics.jsonl")) == _stable(_lines(straight / "metrics.jsonl"))
    assert json.loads((resumed / "summary.json").read_text())["final"] == \
        json.loads((straight / "summary.json").read_text())["final"]
