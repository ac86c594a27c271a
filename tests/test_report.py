"""`retainrl report` on hand-made run folders (no training): every file is written, the HTML is
self-contained, tables.tex is booktabs with a bold best, and every number in summary.md is the
mean / std computed here directly from the runs' summary.json files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from retainrl.metrics.retention import summarize

SKILLS = ["gen", "repair", "reason"]
PHASES = ["gen", "repair", "reason"]
STEPS_PER_PHASE, EVERY = 10, 5


def fake_curves(method: str, seed: int, decay: float | None = None) -> tuple[list[int], dict[str, list[float]]]:
    """Eval steps 0, 5, ..., 30 and per-skill pass@1: a skill rises during its phase, then decays
    (less with replay); seed noise makes seeds differ. Values are rounded to 1/64 (a 64-task set)."""
    rng = np.random.default_rng(1000 * seed + sum(map(ord, method)))
    decay = {"plain": 0.12, "replay": 0.04}.get(method, 0.08) if decay is None else decay
    steps = list(range(0, 3 * STEPS_PER_PHASE + 1, EVERY))
    curves = {}
    for j, skill in enumerate(SKILLS):
        start, end = j * STEPS_PER_PHASE, (j + 1) * STEPS_PER_PHASE
        vals = []
        for t in steps:
            base = 0.1 + 0.05 * j
            if t <= start:
                v = base + 0.02 * t / STEPS_PER_PHASE
            elif t <= end:
                v = base + 0.5 * (t - start) / STEPS_PER_PHASE
            else:
                v = base + 0.5 - decay * (t - end) / STEPS_PER_PHASE
            v += rng.normal(0, 0.03)
            vals.append(float(np.clip(round(v * 64) / 64, 0, 1)))
        curves[skill] = vals
    return steps, curves


def make_run(path: Path, method: str, seed: int, config: bool = False, **kw) -> dict:
    """A run folder as the trainer writes it: metrics.jsonl (eval + train records), summary.json."""
    steps, curves = fake_curves(method, seed, **kw)
    path.mkdir(parents=True)
    recs = []
    for i, t in enumerate(steps):
        phase_end = t % STEPS_PER_PHASE == 0
        phase = max(0, (t - 1) // STEPS_PER_PHASE)
        if t > 0:
            for s in range(t - EVERY + 1, t + 1):
                recs.append({"kind": "train", "step": s, "phase": (s - 1) // STEPS_PER_PHASE,
                             "reward/mean": 0.3, "tokens": 700})
        for skill in SKILLS:
            recs.append({"kind": "eval", "eval_kind": "phase_end" if phase_end else "periodic", "step": t,
                         "phase": phase, "skill": skill, "pass@1": curves[skill][i], "n": 64})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    R = [[curves[s][steps.index(t)] for s in SKILLS] for t in range(0, 31, STEPS_PER_PHASE)]
    summary = summarize(SKILLS, PHASES, R, curves=curves)
    rng = np.random.default_rng(seed)
    summary.update({"tokens_generated": int(50_000 + 1000 * seed + 7000 * (method == "replay")),
                    "verifier_cpu_s": float(round(12 + rng.random() * 3, 4)), "verifier_errors": 0,
                    "skipped_steps": 0, "steps": 30, "method": method, "algo": "grpo", "seed": seed,
                    "protocol": "sequential"})
    (path / "summary.json").write_text(json.dumps(summary, indent=2))
    if config:
        (path / "config.yaml").write_text(f"name: x\nseed: {seed}\nmethod:\n  name: {method}\nrl:\n  algo: grpo\n")
    return summary


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    """2 methods x 2 seeds, 3 skills trained in 3 sequential phases; the report is made once."""
    from retainrl.report import run_report

    root = tmp_path_factory.mktemp("report") / "runs"
    for method in ("plain", "replay"):
        for seed in (0, 1):
            make_run(root / f"{method}-s{seed}", method, seed)
    return root, run_report(root)


# ----------------------------------------------------------------------------- helpers


def _tables(md: str) -> list[list[list[str]]]:
    """Every Markdown table of `md` as rows of cells (header row first, separator dropped)."""
    tables, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-:") for c in cells):
                cur.append(cells)
        elif cur:
            tables.append(cur)
            cur = []
    return tables


def _parse_cell(text: str) -> tuple[float, float | None, int]:
    """'**0.412 ± 0.013**' -> (0.412, 0.013, 3 decimals); '12,345' -> (12345, None, 0)."""
    text = text.strip("*").replace(",", "")
    mean, _, std = text.partition(" ± ")
    digits = len(mean.split(".")[1]) if "." in mean else 0
    return float(mean), (float(std) if std else None), digits


def _direct(values: list[float]) -> tuple[float, float]:
    """Mean and sample std, computed here without the package's aggregation."""
    n = len(values)
    mean = sum(values) / n
    std = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return mean, std


def _column_value(summary: dict, column: str) -> float | None:
    name = column.rstrip(" ↑↓")
    if name == "target gain":
        return sum(summary["target_gain"]) / len(summary["target_gain"])
    m = re.fullmatch(r"gain (\d+) \(.*\)", name)
    if m:
        return summary["target_gain"][int(m.group(1)) - 1]
    key = {"tokens": "tokens_generated", "verifier CPU s": "verifier_cpu_s", "max drop": "max_drop"}.get(name, name)
    return summary[key]


# ----------------------------------------------------------------------------- tests


def test_report_writes_every_file(report):
    runs_dir, files = report
    out = runs_dir / "report"
    expected = {"report.html", "summary.md", "tables.tex"} | {
        f"{stem}.{ext}" for stem in ("learning_curves", "accuracy_matrix", "forgetting_curves", "tradeoff",
                                     "stability") for ext in ("png", "pdf")}
    assert expected <= set(files)
    for name in expected:
        assert (out / name).exists() and (out / name).stat().st_size > 0, name
        assert files[name] == out / name
    assert (out / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "tradeoff.pdf").read_bytes()[:5] == b"%PDF-"


def test_html_is_self_contained(report):
    page = report[1]["report.html"].read_text()
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page, flags=re.I)
    assert refs, "the figures must be embedded"
    assert all(r.startswith("data:image/png;base64,") for r in refs), [r[:40] for r in refs]
    assert not re.search(r"https?://|@import|url\(", page)
    assert page.count("<img") == 5 and "<style>" in page


def test_tables_tex_is_booktabs_with_bold_best(report):
    runs_dir, files = report
    tex = files["tables.tex"].read_text()
    for cmd in (r"\toprule", r"\midrule", r"\bottomrule"):
        assert tex.count(cmd) == 3, cmd
    assert r"\hline" not in tex and r"$\pm$" in tex
    # Retention table: avg is a max-is-best column, forgetting a min-is-best one.
    table = tex.split(r"\begin{tabular}")[1].split(r"\bottomrule")[0]
    rows = [r.rstrip(r" \\").split(" & ") for r in table.split(r"\midrule")[1].strip().splitlines()]
    summaries = {m: [json.loads((runs_dir / f"{m}-s{s}" / "summary.json").read_text()) for s in (0, 1)]
                 for m in ("plain", "replay")}
    for col, key, pick in ((2, "avg", max), (4, "forgetting", min)):
        means = {m: round(_direct([s[key] for s in ss])[0], 3) for m, ss in summaries.items()}
        best = pick(means.values())
        for row in rows:
            assert row[col].startswith(r"\textbf{") == (means[row[0]] == best), (key, row)


def test_summary_md_numbers_equal_the_runs(report):
    """Acceptance: every mean ± std in summary.md is the mean / sample std of the summary.json
    values, to the printed rounding; the runs table lists each run's seed and steps."""
    runs_dir, files = report
    md = files["summary.md"].read_text()
    summaries = {}
    for p in sorted(runs_dir.glob("*/summary.json")):
        s = json.loads(p.read_text())
        summaries.setdefault(s["method"], []).append(s)
    tables = _tables(md)
    metric_tables = [t for t in tables if t[0][:2] == ["method", "seeds"]]
    assert len(metric_tables) == 3
    checked = 0
    for table in metric_tables:
        head, *rows = table
        assert {r[0] for r in rows} == {"plain", "replay"}
        for row in rows:
            runs = summaries[row[0]]
            assert int(row[1]) == len(runs) == 2
            for column, cell in zip(head[2:], row[2:]):
                mean, std, digits = _parse_cell(cell)
                want_mean, want_std = _direct([_column_value(s, column) for s in runs])
                tol = 0.5 * 10 ** -digits + 1e-9
                assert abs(mean - want_mean) <= tol, (row[0], column, cell, want_mean)
                assert std is not None and abs(std - want_std) <= tol, (row[0], column, cell, want_std)
                checked += 1
    assert checked == 2 * (7 + 4 + 4)
    runs_table = next(t for t in tables if t[0][:2] == ["method", "seed"])
    for label, seed, folder, steps, *_ in runs_table[1:]:
        s = json.loads((runs_dir / folder / "summary.json").read_text())
        assert (label, int(seed), int(steps)) == (s["method"], s["seed"], s["steps"])
    assert "How to read this" in md and "docs/METRICS.md" in md


def test_bold_marks_best_in_markdown(report):
    md = report[1]["summary.md"].read_text()
    head, *rows = _tables(md)[0]
    forgetting = head.index("forgetting ↓")
    vals = {r[0]: _parse_cell(r[forgetting])[0] for r in rows}
    best = min(vals, key=vals.get)
    assert next(r for r in rows if r[0] == best)[forgetting].startswith("**")
    assert not any(r[head.index("tokens")].startswith("**") for r in rows)  # cost: never bold


def test_single_run_and_sweep_folders(tmp_path):
    from retainrl.report import discover, run_report

    one = tmp_path / "one"
    make_run(one, "plain", 3, config=True)
    files = run_report(one)
    md = files["summary.md"].read_text()
    head, row = _tables(md)[0]
    assert row[:2] == ["plain", "1"] and "±" not in row[2]  # one seed: the value alone
    s = json.loads((one / "summary.json").read_text())
    assert _parse_cell(row[2])[0] == pytest.approx(s["avg"], abs=5e-4)

    sweep = tmp_path / "sweep"
    points = []
    for eps in ("0.01", "0.1"):
        label = f"method.name=plain,safety.eps={eps}"
        for seed in (0, 1):
            make_run(sweep / label / f"seed{seed}", "plain", seed, decay=float(eps))
        points.append({"label": label, "assignments": ["method.name=plain", f"safety.eps={eps}"],
                       "runs": [f"{label}/seed0", f"{label}/seed1"]})
    (sweep / "sweep.json").write_text(json.dumps({"points": points, "seeds": [0, 1]}))
    runs = discover(sweep)
    assert runs.kind == "sweep" and [g.label for g in runs.groups] == ["eps=0.01", "eps=0.1"]  # one-valued axes left out
    assert (run_report(sweep)["tradeoff.png"]).exists()


def test_folder_groups_by_config_without_seed(tmp_path):
    from retainrl.report import discover

    for m in ("replay", "plain"):
        for seed in (0, 1):
            make_run(tmp_path / f"{m}{seed}", m, seed, config=True)
    runs = discover(tmp_path)
    assert [g.label for g in runs.groups] == ["plain", "replay"]  # plain (the baseline) first
    assert [[r.seed for r in g.runs] for g in runs.groups] == [[0, 1], [0, 1]]


def test_interference_heatmap(tmp_path):
    from retainrl.report.plots import plot_interference

    M = [[0.30, -0.10, 0.02], [-0.05, 0.25, 0.00], [0.04, -0.12, 0.20]]  # row: trained, column: affected
    files = plot_interference(M, SKILLS, "Interference: Δ pass@1 from one phase", tmp_path / "interf.png")
    assert [f.name for f in files] == ["interf.png", "interf.pdf"]
    assert all(f.stat().st_size > 1000 for f in files)
    with pytest.raises(ValueError, match="3 x 3"):
        plot_interference([[0.1, 0.2]], SKILLS, "bad", tmp_path / "bad")


def test_no_runs_is_a_clear_error(tmp_path):
    from retainrl.report import run_report

    with pytest.raises(ValueError, match="no run under"):
        run_report(tmp_path)


def test_mixed_protocol_has_no_forgetting(tmp_path):
    """One phase trains every skill: forgetting/bwt are None (printed '–'), no forgetting figure,
    and the trade-off plot falls back to max drop."""
    from retainrl.report import run_report

    for method in ("plain", "replay"):
        path = tmp_path / method
        path.mkdir()
        curves = {"gen": [0.1, 0.5, 0.4], "repair": [0.2, 0.3, 0.6], "reason": [0.3, 0.2, 0.4]}
        recs = [{"kind": "eval", "eval_kind": "phase_end" if t in (0, 20) else "periodic", "step": t, "phase": 0,
                 "skill": sk, "pass@1": c[i]} for i, t in enumerate((0, 10, 20)) for sk, c in curves.items()]
        (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        R = [[c[0] for c in curves.values()], [c[2] for c in curves.values()]]
        s = summarize(SKILLS, [SKILLS], R, curves=curves)
        s.update({"method": method, "seed": 0, "steps": 20, "tokens_generated": 10, "verifier_cpu_s": 1.0,
                  "algo": "grpo", "protocol": "mixed"})
        (path / "summary.json").write_text(json.dumps(s))
    files = run_report(tmp_path)
    assert "forgetting_curves.png" not in files and "tradeoff.png" in files
    head, *rows = _tables(files["summary.md"].read_text())[0]
    assert all(r[head.index("forgetting ↓")] == "–" for r in rows)
    assert not any("**" in cell for r in rows for cell in r)  # identical runs: all tied, nothing bold
    assert "tab:retention" in files["tables.tex"].read_text()


def test_demo_layout_labels_groups_by_folder_name(tmp_path):
    """OUT/<name>/seed<k>/ (retainrl demo): the folder names label the groups, not the config
    difference (`safety.enabled=true, eps=0.1`)."""
    from retainrl.report import discover

    for name, method in (("plain", "plain"), ("safe-eps0.1", "plain"), ("kl", "plain")):
        for seed in (0, 1):
            make_run(tmp_path / name / f"seed{seed}", method, seed, config=True)
            if name != "plain":  # the config difference the folder name stands for
                cfg = tmp_path / name / f"seed{seed}" / "config.yaml"
                cfg.write_text(cfg.read_text() + ("safety:\n  eps: 0.1\n" if "eps" in name else "kl: 0.05\n"))
    runs = discover(tmp_path)
    assert sorted(g.label for g in runs.groups) == ["kl", "plain", "safe-eps0.1"]
