"""Report figures (matplotlib, Agg): each written as PNG (150 dpi) and PDF.

Colours are the Okabe-Ito palette (safe for the common colour-vision deficiencies), with a
marker and a line style per group as a second cue; heatmaps use viridis (sequential) and PuOr
(diverging). Every figure function takes the loaded runs (report.runs) or plain arrays and a
path stem, and returns the files it wrote. Seed bands are min-max over seeds.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from retainrl.report.runs import Group, RunSet  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINES = ["-", "--", "-.", ":"]
STYLE = {
    "font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 10,
    "xtick.labelsize": 10, "ytick.labelsize": 10, "figure.titlesize": 13,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "savefig.dpi": 150, "pdf.fonttype": 42, "figure.facecolor": "white",
}


def color(i: int) -> str:
    return OKABE_ITO[i % len(OKABE_ITO)]


def save(fig, stem: Path) -> list[Path]:
    """stem.png and stem.pdf, trimmed to the drawn area (no clipped legends); closes the figure."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    out = []
    for ext in ("png", "pdf"):
        path = stem.parent / f"{stem.name}.{ext}"
        meta = {"CreationDate": None} if ext == "pdf" else {"Software": None}
        fig.savefig(path, bbox_inches="tight", pad_inches=0.15, metadata=meta)
        out.append(path)
    plt.close(fig)
    return out


def _phase_name(p) -> str:
    return p if isinstance(p, str) else "+".join(p)


def _legend_below(fig, axes, n: int) -> None:
    """One legend for all panels, below them (the figure uses the constrained layout)."""
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        width = max(len(lab) for lab in labels)
        ncol = max(1, min(n, 4, 110 // (width + 6)))
        fig.legend(handles, labels, loc="outside lower center", ncol=ncol, frameon=False)


def seed_band(group: Group, skill: str, start: float | None = None):
    """(steps, mean, min, max) over the group's seeds; curves interpolated onto the union of steps."""
    curves = [r.curve(skill) for r in group.runs if skill in r.skills]
    steps = np.unique(np.concatenate([c[0] for c in curves]))
    if start is not None:
        steps = steps[steps >= start]
    ys = np.array([np.interp(steps, x, y) for x, y in curves])
    return steps, ys.mean(axis=0), ys.min(axis=0), ys.max(axis=0)


def _band_note(runs: RunSet) -> str:
    return "; band: min–max over seeds" if any(len(g.runs) > 1 for g in runs.groups) else ""


def _draw_group(ax, i: int, group: Group, skill: str, start: float | None = None) -> None:
    steps, mean, lo, hi = seed_band(group, skill, start)
    n = len(group.runs)
    ax.plot(steps, mean, color=color(i), ls=LINES[i % len(LINES)], marker=MARKERS[i % len(MARKERS)],
            ms=4, lw=1.8, label=f"{group.label} ({n} seed{'s' if n > 1 else ''})")
    if n > 1:
        ax.fill_between(steps, lo, hi, color=color(i), alpha=0.18, lw=0)


def _phase_marks(ax, run, label_top: bool = True) -> None:
    """Dashed lines at phase ends; each phase's skills written above its span."""
    bounds = run.phase_end_steps()
    for b in bounds[1:-1]:
        ax.axvline(b, color="0.35", ls="--", lw=1)
    if label_top:
        trans = ax.get_xaxis_transform()
        for l, p in enumerate(run.summary["phases"]):
            mid = (bounds[l] + bounds[l + 1]) / 2
            ax.text(mid, 1.01, _phase_name(p), transform=trans, ha="center", va="bottom", fontsize=9,
                    color="0.3", clip_on=False)


def _ylim(axes, values) -> None:
    top = max([v for v in values if v is not None and math.isfinite(v)] + [0.05])
    for ax in axes:
        ax.set_ylim(-0.02, min(1.02, top * 1.12 + 0.02))


def plot_learning_curves(runs: RunSet, stem: Path) -> list[Path]:
    """One panel per skill: held-out pass@1 over training steps, one line per group, seed bands."""
    skills = runs.skills
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(skills), figsize=(4.3 * len(skills), 4.2), sharey=True, squeeze=False,
                                 layout="constrained")
        axes = axes[0]
        peak = []
        for ax, skill in zip(axes, skills):
            for i, g in enumerate(runs.groups):
                if skill in g.first.skills:
                    _draw_group(ax, i, g, skill)
                    peak.append(float(seed_band(g, skill)[3].max()))
            _phase_marks(ax, runs.groups[0].first)
            ax.set_title(skill, pad=18)
            ax.set_xlabel("training step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        axes[0].set_ylabel("held-out pass@1")
        _ylim(axes, peak)
        fig.suptitle("Per-skill learning curves (dashed: phase ends" + _band_note(runs) + ")")
        _legend_below(fig, axes, len(runs.groups))
        return save(fig, stem)


def mean_matrix(group: Group) -> tuple[np.ndarray, np.ndarray]:
    """Seed mean and sample std (0 for one seed) of R, shape (P + 1, S)."""
    Rs = np.array([r.summary["R"] for r in group.runs], dtype=float)
    std = Rs.std(axis=0, ddof=1) if len(Rs) > 1 else np.zeros_like(Rs[0])
    return Rs.mean(axis=0), std


def _annotate_heatmap(ax, M, std, fmt: str, cmap, norm) -> None:
    for (l, j), v in np.ndenumerate(M):
        r, g, b, _ = cmap(norm(v))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
        text = f"{v:{fmt}}" + (f"\n±{std[l, j]:{fmt}}" if std is not None and std[l, j] > 0 else "")
        ax.text(j, l, text, ha="center", va="center", fontsize=10, color="white" if dark else "black")


def plot_accuracy_matrix(runs: RunSet, stem: Path) -> list[Path]:
    """R (rows: before training, after each phase; columns: skills) per group, seed mean ± std.

    Outlined cells: the skills the row's phase trained."""
    groups = runs.groups
    ncols = min(len(groups), 3)
    nrows = math.ceil(len(groups) / ncols)
    mats = [mean_matrix(g) for g in groups]
    vmax = max(0.1, math.ceil(max(float(m.max()) for m, _ in mats) * 10) / 10)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        S, P1 = mats[0][0].shape[1], mats[0][0].shape[0]
        fig, axes = plt.subplots(nrows, ncols, figsize=(0.95 * S * ncols + 0.3 * ncols + 2.4, 0.62 * P1 * nrows + 1.1 * nrows + 0.5),
                                 squeeze=False, layout="constrained")
        cmap, norm = plt.get_cmap("viridis"), plt.Normalize(0, vmax)
        for k, (ax, g, (M, std)) in enumerate(zip(axes.flat, groups, mats)):
            run = g.first
            im = ax.imshow(M, cmap=cmap, norm=norm, aspect="auto")
            _annotate_heatmap(ax, M, std, ".2f", cmap, norm)
            rows = ["before training"] + [f"after {l}: {_phase_name(p)}" for l, p in enumerate(run.summary["phases"], 1)]
            ax.set_yticks(range(len(rows)), rows)
            ax.set_xticks(range(len(run.skills)), run.skills)
            ax.xaxis.tick_top()
            ax.tick_params(length=0)
            for l, p in enumerate(run.summary["phases"], 1):
                for s in ([p] if isinstance(p, str) else p):
                    j = run.skills.index(s)
                    ax.add_patch(Rectangle((j - 0.5, l - 0.5), 1, 1, fill=False, ec="#D55E00", lw=2.2))
            n = len(g.runs)
            ax.set_title(f"{g.label} ({'mean of ' + str(n) + ' seeds' if n > 1 else '1 run'})", pad=8)
            if k % ncols:
                ax.set_yticklabels([])
        for ax in list(axes.flat)[len(groups):]:
            ax.set_visible(False)
        cbar = fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.85, pad=0.02)
        cbar.set_label("held-out pass@1")
        fig.suptitle("Accuracy matrix R (orange outline: skills trained in that phase)")
        return save(fig, stem)


def protected_skills(run) -> list[tuple[str, int]]:
    """(skill, p_j) for skills whose last training phase ends before the last phase."""
    P = run.n_phases
    return [(s, p) for s, p in (run.summary.get("trained_phase") or {}).items() if p is not None and p < P]


def plot_forgetting_curves(runs: RunSet, stem: Path) -> list[Path] | None:
    """Protected skills' pass@1 from the end of their own phase on, group against group.
    None when no skill is protected (one phase: single or mixed protocol)."""
    first = runs.groups[0].first
    prot = protected_skills(first)
    if not prot:
        return None
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(prot), figsize=(4.6 * len(prot), 4.2), sharey=True, squeeze=False,
                                 layout="constrained")
        axes = axes[0]
        peak = []
        for ax, (skill, p) in zip(axes, prot):
            start = first.phase_end_steps()[p]
            for i, g in enumerate(runs.groups):
                _draw_group(ax, i, g, skill, start=start)
                peak.append(float(seed_band(g, skill, start)[3].max()))
            bounds = first.phase_end_steps()
            for b in bounds[p + 1:-1]:
                ax.axvline(b, color="0.35", ls="--", lw=1)
            ax.set_title(f"{skill} (trained in phase {p})")
            ax.set_xlabel("training step")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
        axes[0].set_ylabel("held-out pass@1")
        _ylim(axes, peak)
        fig.suptitle("Forgetting: earlier-trained skills after their phase" + (f" ({_band_note(runs)[2:]})"
                                                                              if _band_note(runs) else ""))
        _legend_below(fig, axes, len(runs.groups))
        return save(fig, stem)


def _eps_key(runs: RunSet) -> str | None:
    keys = [k for k in runs.varied_keys if "eps" in k.rsplit(".", 1)[-1].lower()]
    return keys[0] if keys else None


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def plot_tradeoff(runs: RunSet, stem: Path) -> list[Path]:
    """Target gain against forgetting (max drop when no run has forgetting) and against the worst
    skill, one point per group with seed std error bars; with an eps grid key, the points that
    differ only in eps are joined in eps order (the eps Pareto plot)."""
    aggs = [g.aggregate() for g in runs.groups]
    xkey = "forgetting" if any(a.get("forgetting", {}).get("mean") is not None for a in aggs) else "max_drop"
    xname = {"forgetting": "forgetting (pass@1 lost, lower is better)",
             "max_drop": "max drop (pass@1 peak − final, lower is better)"}[xkey]
    eps = _eps_key(runs)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.8), layout="constrained")
        for ax, (key, name, better) in zip(axes, [(xkey, xname, "↖ better"),
                                                  ("worst", "worst skill pass@1 (higher is better)", "↗ better")]):
            for i, (g, a) in enumerate(zip(runs.groups, aggs)):
                x, y = a.get(key, {}), a.get("target_gain_mean", {})
                if x.get("mean") is None or y.get("mean") is None:
                    continue
                ax.errorbar(x["mean"], y["mean"], xerr=x["std"] or None, yerr=y["std"] or None,
                            fmt=MARKERS[i % len(MARKERS)], color=color(i), ms=8, capsize=3, lw=1.3,
                            label=f"{g.label} ({len(g.runs)} seed{'s' if len(g.runs) > 1 else ''})")
            if eps:
                _join_eps(ax, runs, aggs, key, eps)
            ax.set_xlabel(name)
            ax.set_ylabel("target gain (pass@1, mean over phases)")
            ax.text(0.98 if "↗" in better else 0.02, 0.97, better, transform=ax.transAxes,
                    ha="right" if "↗" in better else "left", va="top", fontsize=10, color="0.3")
            ax.margins(0.15)
        title = f"{eps} Pareto" if eps else "Trade-off"
        fig.suptitle(f"{title}: what the target skills gained vs. what the others lost (bars: ±1 std over seeds)")
        _legend_below(fig, axes, len(runs.groups))
        return save(fig, stem)


def _join_eps(ax, runs: RunSet, aggs, key: str, eps: str) -> None:
    lines: dict[tuple, list] = {}
    for g, a in zip(runs.groups, aggs):
        rest = tuple(sorted((k, v) for k, v in g.assignments.items() if k != eps))
        e = _float(g.assignments.get(eps))
        if e is not None and a.get(key, {}).get("mean") is not None and a["target_gain_mean"]["mean"] is not None:
            lines.setdefault(rest, []).append((e, a[key]["mean"], a["target_gain_mean"]["mean"]))
    for pts in lines.values():
        if len(pts) > 1:
            pts.sort()
            ax.plot([p[1] for p in pts], [p[2] for p in pts], color="0.5", lw=1, zorder=0)
            for e, x, y in pts:
                ax.annotate(f"{e:g}", (x, y), textcoords="offset points", xytext=(6, -12), fontsize=9, color="0.3")


def plot_stability(runs: RunSet, stem: Path) -> list[Path]:
    """Horizontal bars, one row per group. Left: seed spread (sample std over seeds) of avg, worst
    and target gain. Right: curve oscillation and max drop, mean ± std over seeds."""
    aggs = [g.aggregate() for g in runs.groups]
    labels = [g.label for g in runs.groups]
    y = np.arange(len(labels))
    multi = any(len(g.runs) > 1 for g in runs.groups)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(11, 1.6 + 0.75 * len(labels)), sharey=True, layout="constrained")
        spread = [("avg", "avg"), ("worst", "worst"), ("target_gain_mean", "target gain")]
        _bars(axes[0], y, aggs, spread, lambda e: (e["std"] if e.get("n", 0) > 1 else np.nan), None)
        axes[0].set_title("Seed spread of the final metrics")
        axes[0].set_xlabel("sample std over seeds (pass@1)")
        if not multi:
            axes[0].text(0.5, 0.5, "one seed per method:\nno spread to show", transform=axes[0].transAxes,
                         ha="center", va="center", color="0.3")
        curve = [("oscillation", "oscillation"), ("max_drop", "max drop")]
        _bars(axes[1], y, aggs, curve, lambda e: e.get("mean"), lambda e: e.get("std"))
        axes[1].set_title("Curve stability (error bars: ±1 std over seeds)")
        axes[1].set_xlabel("pass@1 (mean |Δ| between evals; peak − final)")
        axes[0].set_yticks(y, labels)
        axes[0].invert_yaxis()  # first group on top, as in the tables
        for ax in axes:
            ax.set_xlim(left=0)
            ax.grid(axis="y", visible=False)
            ax.legend(frameon=True, framealpha=0.9, loc="best", fontsize=9)
        fig.suptitle("Stability: shorter bars are steadier")
        return save(fig, stem)


def _bars(ax, y, aggs, metrics, value, err) -> None:
    h = 0.8 / len(metrics)
    for k, (key, name) in enumerate(metrics):
        vals, errs = [], []
        for a in aggs:
            e = a.get(key) or {}
            v = value(e) if e.get("mean") is not None else np.nan
            vals.append(np.nan if v is None else v)
            errs.append((err(e) or 0.0) if err and e.get("mean") is not None and e.get("n", 0) > 1 else 0.0)
        ax.barh(y + (k - (len(metrics) - 1) / 2) * h, np.nan_to_num(vals), h, xerr=errs if err else None,
                capsize=3, color=color(k), label=name, hatch=["", "//", ".."][k % 3], edgecolor="white", lw=0.5)


def plot_interference(matrix, skills, title: str, path) -> list[Path]:
    """S x S heatmap: entry [i][j] is the effect on skill j (column) of training skill i (row),
    e.g. the change in pass@1. Diverging colours centred at 0; writes path as .png and .pdf."""
    M = np.asarray(matrix, dtype=float)
    if M.shape != (len(skills), len(skills)):
        raise ValueError(f"interference matrix must be {len(skills)} x {len(skills)}, got {M.shape}")
    lim = max(float(np.nanmax(np.abs(M))) if M.size else 0.0, 1e-9)
    with plt.rc_context({**STYLE, "axes.grid": False}):
        fig, ax = plt.subplots(figsize=(1.2 * len(skills) + 2.8, 1.0 * len(skills) + 1.6))
        cmap, norm = plt.get_cmap("PuOr"), plt.Normalize(-lim, lim)
        im = ax.imshow(M, cmap=cmap, norm=norm)
        _annotate_heatmap(ax, M, None, "+.2f", cmap, norm)
        ax.set_xticks(range(len(skills)), skills)
        ax.set_yticks(range(len(skills)), skills)
        ax.set_xlabel("effect on skill")
        ax.set_ylabel("trained skill")
        ax.tick_params(length=0)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, shrink=0.85).set_label("Δ pass@1")
        path = Path(path)
        return save(fig, path.with_suffix("") if path.suffix.lower() in (".png", ".pdf") else path)
