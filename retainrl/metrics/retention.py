"""Retention metrics for multi-skill training: did learning a new skill cost the old ones?

Pure functions on plain lists (or numpy arrays); no torch. Every definition below is repeated,
with worked examples, in docs/METRICS.md; keep the two in step.

Notation. Skills j are named by `skills`. The run has P phases; `phases[l - 1]` is the skill
name, or list of names, trained in phase l (1-based). R[l][j] is the held-out pass@1 of skill j
after phase l, and R[0][j] is the model before any training, so R has P + 1 rows and one column
per skill, in the order of `skills`. p_j is the LAST phase that trains skill j (a skill trained
in phases 1 and 3 has p_j = 3); a skill that no phase trains has no p_j. The `mixed` protocol
is one phase that trains every skill (P = 1).

    avg         = mean_j R[P][j]
    worst       = min_j R[P][j]
    forgetting  = mean over {j : p_j < P} of ( max_{0 <= l < P} R[l][j] - R[P][j] )
    bwt         = mean over {j : p_j < P} of ( R[P][j] - R[p_j][j] )        (Lopez-Paz & Ranzato 2017)
    fwt         = mean over {j : p_j > 1} of ( R[p_j - 1][j] - R[0][j] )
    target_gain = [ mean_{j in T_l} (R[l][j] - R[l-1][j])  for l = 1..P ]  (T_l: skills of phase l)
    max_drop    = mean_j ( max_t c_j(t) - c_j(last) )   over per-skill eval curves c_j
    oscillation = mean_j ( mean_t |c_j(t+1) - c_j(t)| )  over skills with >= 2 evals

Skills never trained are in avg, worst, max_drop and oscillation, but in none of forgetting,
bwt, fwt (they have no p_j). Forgetting and bwt are signed: a skill that improved after its
phase gives negative forgetting and positive bwt. A metric whose set of skills is empty is
None (JSON null), never NaN: forgetting and bwt with one phase (mixed), fwt when no skill is
trained after phase 1, max_drop and oscillation when no curves are given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

_IDENTITY_KEYS = ("skills", "phases", "R", "trained_phase")


# ----------------------------------------------------------------------------- inputs


def _mean(values) -> float | None:
    values = list(values)
    return float(np.mean(values)) if values else None


def normalize_phases(skills: Sequence[str], phases: Sequence) -> list[list[str]]:
    """Each phase as a list of skill names; checks every name is in `skills`, none repeated."""
    known = set(skills)
    if len(known) != len(skills):
        raise ValueError(f"skill names must be unique, got {list(skills)}")
    out = []
    for l, phase in enumerate(phases, start=1):
        names = [phase] if isinstance(phase, str) else list(phase)
        if not names:
            raise ValueError(f"phase {l} trains no skill")
        for name in names:
            if name not in known:
                raise ValueError(f"phase {l} trains unknown skill {name!r}; skills are {list(skills)}")
        if len(set(names)) != len(names):
            raise ValueError(f"phase {l} lists a skill twice: {names}")
        out.append(names)
    return out


def trained_phase(skills: Sequence[str], phases: Sequence) -> dict[str, int | None]:
    """p_j: the last (1-based) phase that trains each skill, or None if no phase does."""
    last: dict[str, int | None] = {s: None for s in skills}
    for l, names in enumerate(normalize_phases(skills, phases), start=1):
        for name in names:
            last[name] = l
    return last


def _score(x, what: str) -> float:
    if isinstance(x, (bool, np.bool_)) or x is None:
        raise ValueError(f"{what} must be a pass@1 in [0, 1], got {x!r}")
    v = float(x)
    if not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must be a pass@1 in [0, 1], got {x!r}")
    return v


def check_matrix(skills: Sequence[str], phases: Sequence, R) -> np.ndarray:
    """R as a float array (P + 1, S) after checking its shape and values."""
    rows = [list(r) for r in R]
    want = (len(phases) + 1, len(skills))
    if len(rows) != want[0] or any(len(r) != want[1] for r in rows):
        got = (len(rows), sorted({len(r) for r in rows}))
        raise ValueError(f"R must have P + 1 = {want[0]} rows of {want[1]} skills, got {got[0]} rows "
                         f"of lengths {got[1]}")
    return np.array([[_score(v, f"R[{l}][{skills[j]!r}]") for j, v in enumerate(r)]
                     for l, r in enumerate(rows)], dtype=np.float64)


def _check_curves(curves: Mapping[str, Sequence[float]]) -> dict[str, list[float]]:
    out = {}
    for skill, curve in curves.items():
        values = [_score(v, f"curve[{skill!r}][{t}]") for t, v in enumerate(curve)]
        if not values:
            raise ValueError(f"curve of skill {skill!r} is empty")
        out[skill] = values
    return out


def curves_from_matrix(skills: Sequence[str], R) -> dict[str, list[float]]:
    """Per-skill curves made of the phase-end evaluations R[0..P] (a coarse eval curve)."""
    rows = [list(r) for r in R]
    return {s: [float(r[j]) for r in rows] for j, s in enumerate(skills)}


# ----------------------------------------------------------------------------- phase metrics


def final_scores(skills: Sequence[str], phases: Sequence, R) -> dict[str, float]:
    """R[P][j] per skill."""
    M = check_matrix(skills, phases, R)
    return {s: float(M[-1, j]) for j, s in enumerate(skills)}


def avg(skills: Sequence[str], phases: Sequence, R) -> float | None:
    """mean_j R[P][j]; None when there are no skills."""
    return _mean(final_scores(skills, phases, R).values())


def worst(skills: Sequence[str], phases: Sequence, R) -> float | None:
    """min_j R[P][j]; None when there are no skills."""
    finals = final_scores(skills, phases, R).values()
    return float(min(finals)) if finals else None


def forgetting_per_skill(skills: Sequence[str], phases: Sequence, R) -> dict[str, float]:
    """max_{0 <= l < P} R[l][j] - R[P][j] for each skill with p_j < P (others absent)."""
    M, p = check_matrix(skills, phases, R), trained_phase(skills, phases)
    P = len(phases)
    return {s: float(M[:P, j].max() - M[P, j]) for j, s in enumerate(skills)
            if p[s] is not None and p[s] < P}


def forgetting(skills: Sequence[str], phases: Sequence, R) -> float | None:
    """Mean of `forgetting_per_skill`; None when no skill is trained before the last phase."""
    return _mean(forgetting_per_skill(skills, phases, R).values())


def bwt_per_skill(skills: Sequence[str], phases: Sequence, R) -> dict[str, float]:
    """R[P][j] - R[p_j][j] for each skill with p_j < P (others absent)."""
    M, p = check_matrix(skills, phases, R), trained_phase(skills, phases)
    P = len(phases)
    return {s: float(M[P, j] - M[p[s], j]) for j, s in enumerate(skills)
            if p[s] is not None and p[s] < P}


def bwt(skills: Sequence[str], phases: Sequence, R) -> float | None:
    """Backward transfer (Lopez-Paz & Ranzato 2017); None when no skill has p_j < P."""
    return _mean(bwt_per_skill(skills, phases, R).values())


def fwt_per_skill(skills: Sequence[str], phases: Sequence, R) -> dict[str, float]:
    """R[p_j - 1][j] - R[0][j] for each skill with p_j > 1 (others absent).

    With p_j the LAST training phase, a skill also trained earlier counts that earlier
    training in its fwt (see docs/METRICS.md).
    """
    M, p = check_matrix(skills, phases, R), trained_phase(skills, phases)
    return {s: float(M[p[s] - 1, j] - M[0, j]) for j, s in enumerate(skills)
            if p[s] is not None and p[s] > 1}


def fwt(skills: Sequence[str], phases: Sequence, R) -> float | None:
    """Forward transfer; None when no skill is trained after phase 1."""
    return _mean(fwt_per_skill(skills, phases, R).values())


def target_gain(skills: Sequence[str], phases: Sequence, R) -> list[float]:
    """One entry per phase l: mean over the skills T_l it trains of R[l][j] - R[l-1][j]."""
    M = check_matrix(skills, phases, R)
    col = {s: j for j, s in enumerate(skills)}
    return [float(np.mean([M[l, col[s]] - M[l - 1, col[s]] for s in names]))
            for l, names in enumerate(normalize_phases(skills, phases), start=1)]


# ----------------------------------------------------------------------------- curve metrics


def max_drop_per_skill(curves: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """max_t c_j(t) - c_j(last) per skill; 0 for a skill that ends at its best."""
    return {s: max(c) - c[-1] for s, c in _check_curves(curves).items()}


def max_drop(curves: Mapping[str, Sequence[float]]) -> float | None:
    """Mean over skills of `max_drop_per_skill`; None for no curves. Works for any protocol."""
    return _mean(max_drop_per_skill(curves).values())


def oscillation_per_skill(curves: Mapping[str, Sequence[float]]) -> dict[str, float | None]:
    """Mean |c_j(t+1) - c_j(t)| over consecutive evals; None for a curve with one point."""
    return {s: _mean(abs(b - a) for a, b in zip(c, c[1:]))
            for s, c in _check_curves(curves).items()}


def oscillation(curves: Mapping[str, Sequence[float]]) -> float | None:
    """Mean of the defined per-skill oscillations; None if no skill has two evals."""
    return _mean(v for v in oscillation_per_skill(curves).values() if v is not None)


# ----------------------------------------------------------------------------- summary


def summarize(skills: Sequence[str], phases: Sequence, R, curves=None) -> dict:
    """Every retention metric of one run, as a JSON-ready dict.

    skills: skill names, the column order of R.
    phases: one entry per phase, a skill name or a list of names (mixed: [[all skills]]).
    R:      (P + 1, S) held-out pass@1, row 0 before training.
    curves: optional per-skill eval curves over the whole run, {skill: [pass@1 at each eval]}
            or a list aligned with `skills`; include the eval before training as the first
            point. Without curves, max_drop and oscillation are None (use
            `curves_from_matrix` to compute them from the phase-end rows instead).
    Keys: skills, phases, R, trained_phase, final, avg, worst, forgetting, bwt, fwt, max_drop,
    target_gain (list, one per phase), oscillation, oscillation_per_skill, and the per-skill
    breakdowns forgetting_per_skill, bwt_per_skill, fwt_per_skill, max_drop_per_skill.
    """
    skills = list(skills)
    M = check_matrix(skills, phases, R)
    norm = normalize_phases(skills, phases)
    if curves is not None:
        if not isinstance(curves, Mapping):
            curves = list(curves)
            if len(curves) != len(skills):
                raise ValueError(f"got {len(curves)} curves for {len(skills)} skills")
            curves = dict(zip(skills, curves))
        if set(curves) != set(skills):
            raise ValueError(f"curves are for {sorted(curves)}, skills are {sorted(skills)}")
        curves = {s: curves[s] for s in skills}
    return {
        "skills": skills,
        "phases": [p if isinstance(p, str) else list(p) for p in phases],
        "R": M.tolist(),
        "trained_phase": trained_phase(skills, norm),
        "final": final_scores(skills, norm, M),
        "avg": avg(skills, norm, M),
        "worst": worst(skills, norm, M),
        "forgetting": forgetting(skills, norm, M),
        "bwt": bwt(skills, norm, M),
        "fwt": fwt(skills, norm, M),
        "max_drop": None if curves is None else max_drop(curves),
        "target_gain": target_gain(skills, norm, M),
        "oscillation": None if curves is None else oscillation(curves),
        "oscillation_per_skill": None if curves is None else oscillation_per_skill(curves),
        "forgetting_per_skill": forgetting_per_skill(skills, norm, M),
        "bwt_per_skill": bwt_per_skill(skills, norm, M),
        "fwt_per_skill": fwt_per_skill(skills, norm, M),
        "max_drop_per_skill": None if curves is None else max_drop_per_skill(curves),
    }


# ----------------------------------------------------------------------------- seeds


def _is_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def scalar_metrics(summary: Mapping) -> dict[str, float | None]:
    """Flatten a summary into named scalars: top-level numbers as is, lists as `name/<phase>`
    (1-based), per-skill dicts as `name/<skill>`. Identity keys (skills, phases, R,
    trained_phase) and non-numeric values are skipped; None stays None."""
    out: dict[str, float | None] = {}
    for key, v in summary.items():
        if key in _IDENTITY_KEYS:
            continue
        if v is None or _is_number(v):
            out[key] = None if v is None else float(v)
        elif isinstance(v, (list, tuple)) and all(x is None or _is_number(x) for x in v):
            out.update({f"{key}/{i}": None if x is None else float(x) for i, x in enumerate(v, 1)})
        elif isinstance(v, Mapping) and all(x is None or _is_number(x) for x in v.values()):
            out.update({f"{key}/{k}": None if x is None else float(x) for k, x in v.items()})
    return out


def aggregate_seeds(summaries: Sequence[Mapping]) -> dict[str, dict]:
    """Across runs (seeds) of one protocol: {metric: {mean, std, min, max, n}} per scalar metric.

    std is the sample standard deviation (ddof=1), 0.0 for a single run. n counts the runs in
    which the metric is defined; None values are left out, and a metric None in every run has
    mean = std = min = max = None. Raises ValueError if the runs disagree on skills or phases.
    """
    if not summaries:
        raise ValueError("aggregate_seeds needs at least one summary")
    for key in ("skills", "phases"):
        seen = {repr(s.get(key)) for s in summaries}
        if len(seen) > 1:
            raise ValueError(f"summaries disagree on {key}: {sorted(seen)}")
    flat = [scalar_metrics(s) for s in summaries]
    names = list(dict.fromkeys(k for f in flat for k in f))
    table = {}
    for name in names:
        vals = np.array([f[name] for f in flat if f.get(name) is not None], dtype=np.float64)
        if vals.size == 0:
            table[name] = {"mean": None, "std": None, "min": None, "max": None, "n": 0}
            continue
        table[name] = {"mean": float(vals.mean()),
                       "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
                       "min": float(vals.min()), "max": float(vals.max()), "n": int(vals.size)}
    return table


def format_aggregate(table: Mapping[str, Mapping], digits: int = 3) -> str:
    """The aggregate table as Markdown: metric | mean ± std | min | max | n."""
    def f(x):
        return "-" if x is None else f"{x:.{digits}f}"
    lines = ["| metric | mean ± std | min | max | n |", "|---|---|---|---|---|"]
    for name, s in table.items():
        ms = "-" if s["mean"] is None else f"{f(s['mean'])} ± {f(s['std'])}"
        lines.append(f"| {name} | {ms} | {f(s['min'])} | {f(s['max'])} | {s['n']} |")
    return "\n".join(lines)
