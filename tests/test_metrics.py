"""Metrics: hand-derived numbers (the arithmetic is in the comments), edge cases, pass@k vs brute force."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from retainrl.metrics import (
    aggregate_seeds,
    curves_from_matrix,
    format_aggregate,
    forgetting,
    fwt,
    max_drop,
    mean_pass_at_k,
    oscillation,
    pass_at_k,
    pass_at_k_from_results,
    summarize,
    trained_phase,
)

approx = pytest.approx

# ---------------------------------------------------------------- sequential, three skills

SKILLS = ["gen", "repair", "reason"]
PHASES = ["gen", "repair", "reason"]  # p_gen = 1, p_repair = 2, p_reason = 3, P = 3
R_SEQ = [
    [0.2, 0.1, 0.3],  # before training
    [0.6, 0.2, 0.3],  # after phase 1 (gen)
    [0.5, 0.7, 0.4],  # after phase 2 (repair)
    [0.4, 0.6, 0.8],  # after phase 3 (reason)
]


def test_sequential_three_skills():
    s = summarize(SKILLS, PHASES, R_SEQ)
    assert s["trained_phase"] == {"gen": 1, "repair": 2, "reason": 3}
    assert s["final"] == approx({"gen": 0.4, "repair": 0.6, "reason": 0.8})
    assert s["avg"] == approx(0.6)     # (0.4 + 0.6 + 0.8) / 3
    assert s["worst"] == approx(0.4)   # min(0.4, 0.6, 0.8)
    # skills with p_j < 3: gen, repair.
    # gen:    max(0.2, 0.6, 0.5) - 0.4 = 0.2 ; repair: max(0.1, 0.2, 0.7) - 0.6 = 0.1
    assert s["forgetting_per_skill"] == approx({"gen": 0.2, "repair": 0.1})
    assert s["forgetting"] == approx(0.15)
    # gen: R[3] - R[1] = 0.4 - 0.6 = -0.2 ; repair: R[3] - R[2] = 0.6 - 0.7 = -0.1
    assert s["bwt_per_skill"] == approx({"gen": -0.2, "repair": -0.1})
    assert s["bwt"] == approx(-0.15)
    # skills with p_j > 1: repair: R[1] - R[0] = 0.2 - 0.1 = 0.1 ; reason: R[2] - R[0] = 0.4 - 0.3 = 0.1
    assert s["fwt_per_skill"] == approx({"repair": 0.1, "reason": 0.1})
    assert s["fwt"] == approx(0.1)
    # phase 1: 0.6 - 0.2 ; phase 2: 0.7 - 0.2 ; phase 3: 0.8 - 0.4
    assert s["target_gain"] == approx([0.4, 0.5, 0.4])
    # no curves given: curve metrics undefined
    assert s["max_drop"] is None and s["oscillation"] is None and s["oscillation_per_skill"] is None
    assert s["R"] == R_SEQ and s["skills"] == SKILLS and s["phases"] == PHASES


def test_curve_metrics_from_phase_end_rows():
    curves = curves_from_matrix(SKILLS, R_SEQ)
    assert curves["gen"] == [0.2, 0.6, 0.5, 0.4]
    s = summarize(SKILLS, PHASES, R_SEQ, curves=curves)
    # max_drop: gen 0.6 - 0.4 = 0.2 ; repair 0.7 - 0.6 = 0.1 ; reason 0.8 - 0.8 = 0  -> 0.3 / 3
    assert s["max_drop_per_skill"] == approx({"gen": 0.2, "repair": 0.1, "reason": 0.0})
    assert s["max_drop"] == approx(0.1)
    # oscillation: gen (0.4 + 0.1 + 0.1) / 3 = 0.2 ; repair (0.1 + 0.5 + 0.1) / 3 = 0.7 / 3 ;
    # reason (0 + 0.1 + 0.4) / 3 = 0.5 / 3  -> mean (0.6 + 0.7 + 0.5) / 9 = 0.2
    assert s["oscillation_per_skill"] == approx({"gen": 0.2, "repair": 0.7 / 3, "reason": 0.5 / 3})
    assert s["oscillation"] == approx(0.2)
    # a list aligned with skills is accepted too
    same = summarize(SKILLS, PHASES, R_SEQ, curves=[curves[k] for k in SKILLS])
    assert same["max_drop"] == s["max_drop"]


# ---------------------------------------------------------------- edge cases


def test_skill_trained_in_two_phases_uses_last_phase():
    skills, phases = ["a", "b"], ["a", "b", "a"]  # p_a = 3 (not 1), p_b = 2, P = 3
    R = [[0.1, 0.1], [0.5, 0.2], [0.3, 0.6], [0.7, 0.4]]
    s = summarize(skills, phases, R)
    assert s["trained_phase"] == {"a": 3, "b": 2}
    # only b has p_j < 3: max(0.1, 0.2, 0.6) - 0.4 = 0.2 ; bwt R[3] - R[2] = 0.4 - 0.6 = -0.2
    assert s["forgetting"] == approx(0.2) and s["bwt"] == approx(-0.2)
    assert set(s["forgetting_per_skill"]) == {"b"}
    # a: R[2] - R[0] = 0.3 - 0.1 = 0.2 (includes its own phase-1 training) ; b: R[1] - R[0] = 0.1
    assert s["fwt_per_skill"] == approx({"a": 0.2, "b": 0.1})
    assert s["fwt"] == approx(0.15)
    # phase 1 (a): 0.5 - 0.1 ; phase 2 (b): 0.6 - 0.2 ; phase 3 (a): 0.7 - 0.3
    assert s["target_gain"] == approx([0.4, 0.4, 0.4])


def test_never_trained_skill_counts_in_avg_but_not_in_transfer():
    skills, phases = ["gen", "repair", "held"], ["gen", "repair"]  # held: no p_j
    R = [[0.2, 0.2, 0.5], [0.6, 0.1, 0.4], [0.4, 0.7, 0.3]]
    s = summarize(skills, phases, R)
    assert s["trained_phase"]["held"] is None
    assert s["avg"] == approx(1.4 / 3)  # (0.4 + 0.7 + 0.3) / 3
    assert s["worst"] == approx(0.3)    # the held-out skill
    assert s["forgetting"] == approx(0.2)  # gen only: max(0.2, 0.6) - 0.4
    assert s["bwt"] == approx(-0.2)        # gen: 0.4 - 0.6
    assert s["fwt"] == approx(-0.1)        # repair: R[1] - R[0] = 0.1 - 0.2
    assert s["target_gain"] == approx([0.4, 0.6])


def test_mixed_protocol_one_phase_all_skills():
    skills, phases = ["gen", "repair"], [["gen", "repair"]]  # P = 1
    R = [[0.2, 0.3], [0.5, 0.4]]
    curves = {"gen": [0.2, 0.6, 0.5], "repair": [0.3, 0.2, 0.4]}
    s = summarize(skills, phases, R, curves=curves)
    assert s["avg"] == approx(0.45) and s["worst"] == approx(0.4)
    assert s["forgetting"] is None and s["bwt"] is None and s["fwt"] is None  # nothing has p_j < 1 or > 1
    assert s["forgetting_per_skill"] == {} and s["fwt_per_skill"] == {}
    assert s["target_gain"] == approx([0.2])  # ((0.5 - 0.2) + (0.4 - 0.3)) / 2
    # gen: 0.6 - 0.5 = 0.1 ; repair: 0.4 - 0.4 = 0  -> 0.05
    assert s["max_drop"] == approx(0.05)
    # gen (0.4 + 0.1) / 2 = 0.25 ; repair (0.1 + 0.2) / 2 = 0.15  -> 0.2
    assert s["oscillation"] == approx(0.2)
    text = json.dumps(s, allow_nan=False)  # None -> null, never NaN
    assert '"forgetting": null' in text


def test_one_skill_and_one_point_curve():
    s = summarize(["gen"], ["gen"], [[0.2], [0.7]], curves={"gen": [0.7]})
    assert s["avg"] == approx(0.7) and s["worst"] == approx(0.7)
    assert s["forgetting"] is None and s["bwt"] is None and s["fwt"] is None
    assert s["target_gain"] == approx([0.5])
    assert s["max_drop"] == 0.0                       # max of one point is the final point
    assert s["oscillation"] is None and s["oscillation_per_skill"] == {"gen": None}


def test_fwt_undefined_when_nothing_trained_after_phase_one():
    # phase 1 trains a; b is never trained; P = 1
    assert fwt(["a", "b"], ["a"], [[0.1, 0.1], [0.5, 0.2]]) is None
    assert forgetting(["a", "b"], ["a"], [[0.1, 0.1], [0.5, 0.2]]) is None


def test_forgetting_is_signed():
    # a improves after its phase: max(0.1, 0.5) - 0.9 = -0.4
    assert forgetting(["a", "b"], ["a", "b"], [[0.1, 0.1], [0.5, 0.2], [0.9, 0.6]]) == approx(-0.4)


def test_curve_functions_direct():
    assert max_drop({}) is None and oscillation({}) is None
    assert max_drop({"a": [0.0, 1.0, 0.0]}) == 1.0
    assert oscillation({"a": [0.0, 1.0, 0.0], "b": [0.5]}) == 1.0  # b has no consecutive pair


@pytest.mark.parametrize("phases, R, match", [
    (["gen"], [[0.1]], "rows"),                                  # P + 1 = 2 rows expected
    (["gen"], [[0.1], [0.2, 0.3]], "rows"),
    (["nope"], [[0.1], [0.2]], "unknown skill 'nope'"),
    ([[]], [[0.1], [0.2]], "trains no skill"),
    ([["gen", "gen"]], [[0.1], [0.2]], "twice"),
    (["gen"], [[0.1], [float("nan")]], r"R\[1\]\['gen'\]"),
    (["gen"], [[0.1], [55.0]], r"\[0, 1\]"),                      # a percentage, not a pass@1
])
def test_bad_inputs(phases, R, match):
    with pytest.raises(ValueError, match=match):
        summarize(["gen"], phases, R)


def test_curves_must_cover_the_skills():
    with pytest.raises(ValueError, match="curves are for"):
        summarize(["a", "b"], ["a"], [[0, 0], [1, 0]], curves={"a": [0, 1]})


def test_trained_phase_direct():
    assert trained_phase(["a", "b", "c"], [["a", "b"], "a"]) == {"a": 2, "b": 1, "c": None}


# ---------------------------------------------------------------- seeds


def _seed_runs():
    skills, phases = ["a", "b"], ["a", "b"]
    Rs = [
        [[0, 0], [0.5, 0.0], [0.3, 0.6]],  # avg 0.45, forgetting 0.5-0.3=0.2, fwt 0
        [[0, 0], [0.7, 0.0], [0.6, 0.8]],  # avg 0.70, forgetting 0.1,         fwt 0
        [[0, 0], [0.6, 0.1], [0.6, 0.4]],  # avg 0.50, forgetting 0.0,         fwt 0.1
    ]
    return [summarize(skills, phases, R) for R in Rs]


def test_aggregate_seeds():
    table = aggregate_seeds(_seed_runs())
    # avg: mean 1.65 / 3 = 0.55 ; deviations -0.1, 0.15, -0.05 -> squares 0.035 / (3 - 1) = 0.0175
    assert table["avg"] == approx({"mean": 0.55, "std": math.sqrt(0.0175), "min": 0.45, "max": 0.7, "n": 3})
    # forgetting: 0.2, 0.1, 0.0 -> mean 0.1, sample std sqrt(0.02 / 2) = 0.1
    assert table["forgetting"] == approx({"mean": 0.1, "std": 0.1, "min": 0.0, "max": 0.2, "n": 3})
    # target gain of phase 1 (skill a): 0.5, 0.7, 0.6 -> mean 0.6, std 0.1
    assert table["target_gain/1"]["mean"] == approx(0.6) and table["target_gain/1"]["std"] == approx(0.1)
    assert table["final/b"]["max"] == approx(0.8)
    # no curves in any run: undefined everywhere, counted as 0 runs
    assert table["max_drop"] == {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    assert "R" not in table and "skills" not in table and "trained_phase/a" not in table
    assert "| avg | 0.550 ± 0.132 | 0.450 | 0.700 | 3 |" in format_aggregate(table)


def test_aggregate_one_seed_has_zero_std_and_skips_none():
    one = aggregate_seeds(_seed_runs()[:1])
    assert one["avg"] == approx({"mean": 0.45, "std": 0.0, "min": 0.45, "max": 0.45, "n": 1})
    runs = [{"skills": ["a"], "phases": ["a"], "oscillation": v} for v in (0.2, None, 0.4)]
    osc = aggregate_seeds(runs)["oscillation"]
    assert osc["n"] == 2 and osc["mean"] == approx(0.3)


def test_aggregate_rejects_different_protocols():
    runs = _seed_runs()
    other = summarize(["a", "b"], [["a", "b"]], [[0, 0], [1, 1]])
    with pytest.raises(ValueError, match="phases"):
        aggregate_seeds(runs + [other])
    with pytest.raises(ValueError):
        aggregate_seeds([])


# ---------------------------------------------------------------- pass@k


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """Fraction of k-subsets of n samples (the first c passing) that contain a pass."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_brute_force():
    cases = [(n, c, k) for n in range(1, 8) for c in range(n + 1) for k in range(1, n + 1)]
    n, c = np.array([x[0] for x in cases]), np.array([x[1] for x in cases])
    for k in range(1, 8):
        sel = n >= k
        got = pass_at_k(n[sel], c[sel], k)  # vectorised over all (n, c) with n >= k
        want = [_brute_pass_at_k(a, b, k) for a, b in zip(n[sel], c[sel])]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_pass_at_k_simple_values():
    assert pass_at_k(10, [0, 5, 10], 1) == approx([0.0, 0.5, 1.0])  # pass@1 = c / n
    # n=4, c=1, k=2: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    assert float(pass_at_k(4, 1, 2)) == approx(0.5)
    assert mean_pass_at_k([4, 4], [1, 0], 2) == approx(0.25)
    res = pass_at_k_from_results([[True, False, False, False], [False] * 4], ks=(1, 2))
    assert res == approx({"pass@1": 0.125, "pass@2": 0.25})


def test_pass_at_k_large_n_is_stable():
    n, c, k = 1000, 10, 100
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # exact big-integer ratio
    assert float(pass_at_k(n, c, k)) == approx(exact, rel=1e-12)


@pytest.mark.parametrize("n, c, k, match", [
    (3, 1, 4, "at least k=4"),
    (3, 1, 0, ">= 1"),
    (3, 4, 1, "0 <= c <= n"),
    (3, -1, 1, "0 <= c <= n"),
    (3.5, 1, 1, "integer"),
    (3, 1, 1.0, "int"),
])
def test_pass_at_k_errors(n, c, k, match):
    with pytest.raises(ValueError, match=match):
        pass_at_k(n, c, k)
