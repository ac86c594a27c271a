"""Metric tables of a report: one cell per (group, metric) = mean ± sample std over seeds.

Cells are built once (`build_table`) and rendered three ways (Markdown, HTML, LaTeX with
booktabs), so summary.md, report.html and tables.tex print the same numbers. The best mean of a
column is bold: max for avg, worst, bwt, fwt and target gain, min for forgetting, max drop and
oscillation; cost columns (tokens, CPU) are never bold. Ties are judged on the printed (rounded)
value, so every printed best is bold; a column where all groups tie has no bold.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass

from retainrl.report.runs import Group, RunSet


@dataclass(frozen=True)
class Metric:
    key: str          # key in the seed aggregate (metrics.retention.aggregate_seeds)
    name: str         # column header
    better: str | None  # "max", "min" or None (no best)
    digits: int
    doc: str = ""     # one-line definition for "how to read this"


AVG = Metric("avg", "avg", "max", 3, "mean final held-out pass@1 over all skills, `mean_j R[P][j]`.")
WORST = Metric("worst", "worst", "max", 3, "lowest final held-out pass@1 of any skill, `min_j R[P][j]`.")
FORGETTING = Metric("forgetting", "forgetting", "min", 3,
                    "over skills trained before the last phase, best earlier pass@1 minus final pass@1 "
                    "(lower is better, negative: the skill kept improving).")
BWT = Metric("bwt", "bwt", "max", 3, "backward transfer: final pass@1 minus pass@1 right after the skill's "
             "own phase, same skills (negative: forgetting).")
FWT = Metric("fwt", "fwt", "max", 3, "forward transfer: pass@1 just before a skill's phase minus before "
             "any training, skills trained after phase 1.")
GAIN = Metric("target_gain_mean", "target gain", "max", 3, "mean over phases of the gain of the skills the "
              "phase trains, `R[l][j] - R[l-1][j]` (`target_gain/<l>` per phase).")
MAX_DROP = Metric("max_drop", "max drop", "min", 3, "peak-to-final fall of each skill's eval curve, "
                  "mean over skills.")
OSC = Metric("oscillation", "oscillation", "min", 3, "mean absolute change of pass@1 between "
             "consecutive evaluations, mean over skills.")
TOKENS = Metric("tokens_generated", "tokens", None, 0, "tokens generated (training rollouts + evaluation).")
CPU = Metric("verifier_cpu_s", "verifier CPU s", None, 1, "CPU seconds spent running the verifier.")

HEADLINE = (AVG, WORST, FORGETTING, BWT, GAIN, TOKENS, CPU)
RETENTION = (AVG, WORST, FORGETTING, BWT, FWT)
STABILITY = (MAX_DROP, OSC, TOKENS, CPU)


def phase_gain_metrics(runs: RunSet) -> list[Metric]:
    """target_gain/<l>, one per phase of the first run, named after the phase's skills."""
    phases = runs.runs[0].summary["phases"]
    return [Metric(f"target_gain/{l}", f"gain {l} ({p if isinstance(p, str) else '+'.join(p)})", "max", 3)
            for l, p in enumerate(phases, start=1)]


@dataclass
class Cell:
    mean: float | None
    std: float | None
    n: int
    digits: int
    bold: bool = False

    def text(self, pm: str = "±", dash: str = "–") -> str:
        if self.mean is None:
            return dash
        sep = "," if self.digits == 0 else ""
        m = f"{self.mean:{sep}.{self.digits}f}"
        return m if self.n < 2 else f"{m} {pm} {self.std:{sep}.{self.digits}f}"


@dataclass
class Table:
    metrics: list[Metric]
    labels: list[str]         # one per group
    seeds: list[int]          # runs per group
    cells: list[list[Cell]]   # [group][metric]


def build_table(groups: list[Group], metrics) -> Table:
    aggs = [g.aggregate() for g in groups]
    cells = []
    for agg in aggs:
        row = []
        for m in metrics:
            e = agg.get(m.key) or {"mean": None, "std": None, "n": 0}
            row.append(Cell(e["mean"], e["std"], e["n"], m.digits))
        cells.append(row)
    for j, m in enumerate(metrics):
        vals = [round(row[j].mean, m.digits) for row in cells if row[j].mean is not None]
        if m.better is None or len(set(vals)) < 2:  # one group, or all tied: no best
            continue
        best = max(vals) if m.better == "max" else min(vals)
        for row in cells:
            row[j].bold = row[j].mean is not None and round(row[j].mean, m.digits) == best
    return Table(list(metrics), [g.label for g in groups], [len(g.runs) for g in groups], cells)


# ----------------------------------------------------------------------------- renderers


def _arrow(m: Metric, up: str, down: str) -> str:
    return {"max": f" {up}", "min": f" {down}"}.get(m.better, "")


def to_markdown(t: Table) -> str:
    head = ["method", "seeds", *(m.name + _arrow(m, "↑", "↓") for m in t.metrics)]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * len(t.metrics)]
    for label, n, row in zip(t.labels, t.seeds, t.cells):
        cells = [f"**{c.text()}**" if c.bold else c.text() for c in row]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_html(t: Table) -> str:
    head = "".join(f"<th>{html.escape(m.name + _arrow(m, '↑', '↓'))}</th>" for m in t.metrics)
    rows = []
    for label, n, row in zip(t.labels, t.seeds, t.cells):
        tds = "".join(f"<td class=\"num{' best' if c.bold else ''}\">{html.escape(c.text())}</td>" for c in row)
        rows.append(f"<tr><th scope=\"row\">{html.escape(label)}</th><td class=\"num\">{n}</td>{tds}</tr>")
    return (f"<table><thead><tr><th>method</th><th>seeds</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


_TEX_ESCAPE = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
               "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPE.get(ch, ch) for ch in str(text))


def to_latex(t: Table, caption: str, label: str) -> str:
    head = " & ".join(["Method", "Seeds", *(tex_escape(m.name) + _arrow(m, r"$\uparrow$", r"$\downarrow$")
                                            for m in t.metrics)])
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{caption}}}", rf"\label{{{label}}}",
             r"\begin{tabular}{lr" + "r" * len(t.metrics) + "}", r"\toprule", head + r" \\", r"\midrule"]
    for lab, n, row in zip(t.labels, t.seeds, t.cells):
        cells = []
        for c in row:
            s = re.sub(r"(^|\s)-(?=\d)", r"\1$-$", c.text(pm=r"$\pm$", dash="--"))  # a math minus
            cells.append(rf"\textbf{{{s}}}" if c.bold else s)
        lines.append(" & ".join([tex_escape(lab), str(n), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines)


def latex_document(runs: RunSet) -> str:
    """tables.tex: three booktabs tables (retention, per-phase gain, stability and cost)."""
    note = (r"Mean $\pm$ sample std over seeds; bold: best per column "
            r"($\uparrow$ higher is better, $\downarrow$ lower is better). Held-out pass@1.")
    parts = [f"% Generated by `retainrl report` from {len(runs.runs)} runs under {runs.root}; "
             "numbers read from summary.json.",
             r"% Needs \usepackage{booktabs} in the preamble.", ""]
    specs = [(RETENTION, "Retention after the last phase. " + note, "tab:retention"),
             ([*phase_gain_metrics(runs), GAIN], "Gain of the trained skills per phase. " + note, "tab:gain"),
             (STABILITY, "Stability over the eval curves and cost. " + note, "tab:stability")]
    for metrics, caption, label in specs:
        parts += [to_latex(build_table(runs.groups, metrics), caption, label), ""]
    return "\n".join(parts)
