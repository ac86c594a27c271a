"""Find and load the runs a report covers, and group them by method / grid point.

A report path is one of:
- a run folder (holds summary.json): one group of one run;
- a sweep folder (holds sweep.json from `retainrl sweep`): its grid points, in sweep order, each
  with the seeds that have finished;
- any other folder: every run folder below it (summary.json), grouped by their config.yaml with
  the seed left out (runs without config.yaml: by method, algo and phases).

Everything is read from the run files: summary.json (metrics, R, seed, method), metrics.jsonl
(eval records for the curves) and config.yaml (grouping only). No torch import.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from retainrl.metrics.retention import aggregate_seeds

# Config keys that do not change what a run computes: left out when grouping runs into methods.
_NOT_A_SETTING = {"seed", "name", "progress", "tensorboard", "wandb", "checkpoint_every", "sandbox_workers"}


@dataclass
class Run:
    path: Path
    summary: dict
    config: dict | None
    evals: list[dict] = field(repr=False)

    @property
    def seed(self):
        return self.summary.get("seed", (self.config or {}).get("seed"))

    @property
    def skills(self) -> list[str]:
        return list(self.summary["skills"])

    @property
    def n_phases(self) -> int:
        return len(self.summary["phases"])

    def phase_end_steps(self) -> list[int]:
        """Step of each row of R: 0, then the step at which each phase ended."""
        steps = sorted({int(r["step"]) for r in self.evals if r.get("eval_kind") == "phase_end"})
        if len(steps) == self.n_phases + 1:
            return steps
        total = int(self.summary.get("steps") or self.n_phases)  # no metrics.jsonl: even phases
        return [round(l * total / self.n_phases) for l in range(self.n_phases + 1)]

    def curve(self, skill: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, pass@1) of one skill over the run, one point per evaluation step."""
        by_step = {int(r["step"]): float(r["pass@1"]) for r in self.evals
                   if r.get("skill") == skill and r.get("pass@1") is not None}
        if not by_step:  # fall back to the phase-end rows of R
            j = self.skills.index(skill)
            by_step = {s: float(row[j]) for s, row in zip(self.phase_end_steps(), self.summary["R"])}
        steps = sorted(by_step)
        return np.array(steps, dtype=float), np.array([by_step[s] for s in steps])


@dataclass
class Group:
    """Runs of one method / grid point that differ only in their seed."""

    key: str                     # folder label or config difference, unique in a report
    assignments: dict[str, str]  # what sets this group apart: {"method.name": "replay", ...}
    runs: list[Run]
    label: str = ""              # short display label

    def summaries(self) -> list[dict]:
        """The runs' summaries plus the derived scalar `target_gain_mean` (mean over phases)."""
        out = []
        for r in self.runs:
            s = dict(r.summary)
            gains = [g for g in s.get("target_gain") or [] if g is not None]
            s["target_gain_mean"] = float(np.mean(gains)) if gains else None
            out.append(s)
        return out

    def aggregate(self) -> dict[str, dict]:
        return aggregate_seeds(self.summaries())

    @property
    def first(self) -> Run:
        return self.runs[0]


@dataclass
class RunSet:
    root: Path
    kind: str                    # "run" | "sweep" | "folder"
    groups: list[Group]

    @property
    def runs(self) -> list[Run]:
        return [r for g in self.groups for r in g.runs]

    @property
    def skills(self) -> list[str]:
        return list(dict.fromkeys(s for r in self.runs for s in r.skills))

    @property
    def varied_keys(self) -> list[str]:
        return list(dict.fromkeys(k for g in self.groups for k in g.assignments))


# ----------------------------------------------------------------------------- reading


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl records; a torn last line (a run killed mid-write) is skipped."""
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines):
                break
            raise ValueError(f"{path}:{i}: malformed JSON line") from None
    return out


def load_run(path: Path) -> Run:
    path = Path(path)
    summary = json.loads((path / "summary.json").read_text())
    for key in ("skills", "phases", "R"):
        if key not in summary:
            raise ValueError(f"{path / 'summary.json'} has no {key!r}: not a retainrl run summary")
    config = None
    if (path / "config.yaml").exists():
        config = yaml.safe_load((path / "config.yaml").read_text()) or None
    evals = [r for r in read_records(path / "metrics.jsonl") if r.get("kind") == "eval"]
    return Run(path, summary, config, evals)


def _flatten(d, prefix: str = "") -> dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v)
    return out


def short_label(assignments: dict[str, str], fallback: str) -> str:
    """"replay, kl_coef=0.05" for {method.name: replay, rl.kl_coef: 0.05}; `fallback` when empty."""
    if not assignments:
        return fallback
    tails = [k.rsplit(".", 1)[-1] for k in assignments]
    parts = []
    for (k, v), tail in zip(assignments.items(), tails):
        if k == "method.name":
            parts.append(v)
        else:
            parts.append(f"{tail if tails.count(tail) == 1 else k}={v}")
    return ", ".join(parts)


def _finish(groups: list[Group]) -> list[Group]:
    """Drop empty groups, sort runs by seed, and give each group a short label made of the
    assignments that differ between groups (a grid axis with one value is left out)."""
    groups = [g for g in groups if g.runs]
    keys = list(dict.fromkeys(k for g in groups for k in g.assignments))
    varied = [k for k in keys if len({g.assignments.get(k) for g in groups}) > 1]
    for g in groups:
        g.runs.sort(key=lambda r: (r.seed is None, r.seed if isinstance(r.seed, int) else 0, str(r.path)))
        shown = {k: v for k, v in g.assignments.items() if k in varied}
        g.label = short_label(shown, str(g.first.summary.get("method", g.key)))
    labels = [g.label for g in groups]
    for g in groups:
        if labels.count(g.label) > 1:
            g.label = g.key
    return groups


def _group_folder(runs: list[Run]) -> list[Group]:
    def setting(r: Run) -> dict[str, str]:
        if r.config is not None:
            return {k: v for k, v in _flatten(r.config).items() if k.split(".")[0] not in _NOT_A_SETTING}
        s = r.summary
        return {"method.name": str(s.get("method")), "rl.algo": str(s.get("algo")),
                "protocol.phases": json.dumps(s["phases"])}
    settings = [setting(r) for r in runs]
    keys = list(dict.fromkeys(k for s in settings for k in s))
    varied = [k for k in keys if len({s.get(k) for s in settings}) > 1]
    groups: dict[str, Group] = {}
    for r, s in zip(runs, settings):
        assignments = {k: s.get(k, "-") for k in varied}
        key = ",".join(f"{k}={v}" for k, v in assignments.items()) or "all"
        groups.setdefault(key, Group(key, assignments, [])).runs.append(r)
    ordered = sorted(groups.values(), key=lambda g: (g.assignments.get("method.name") != "plain", g.key))
    return ordered


def discover(path) -> RunSet:
    """The runs under `path` (a run, a sweep or a folder of runs), grouped; ValueError if none."""
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    if (root / "summary.json").exists():
        run = load_run(root)
        return RunSet(root, "run", _finish([Group(root.name, {}, [run])]))
    if (root / "sweep.json").exists():
        sweep = json.loads((root / "sweep.json").read_text())
        groups = []
        for p in sweep["points"]:
            runs = [load_run(root / d) for d in p["runs"] if (root / d / "summary.json").exists()]
            assignments = dict(a.split("=", 1) for a in p["assignments"])
            groups.append(Group(p["label"], assignments, runs))
        groups = _finish(groups)
        if not groups:
            raise ValueError(f"sweep {root} has no finished run yet (no summary.json under it)")
        return RunSet(root, "sweep", groups)
    found = sorted(p.parent for p in root.rglob("summary.json")
                   if not {"report", "ckpt"} & set(p.relative_to(root).parts[:-1]))
    if not found:
        raise ValueError(f"no run under {root}: expected summary.json (a run), sweep.json (a sweep) "
                         "or run folders below it")
    groups = _finish(_group_folder([load_run(p) for p in found]))
    # OUT/<name>/seed<k>/ (the demo's layout): when the folders are the groups, their names are
    # the labels the user chose ("plain", "safe-eps0.1"), shorter than any config difference
    parents = [{Path(r.path).parent.name for r in g.runs} for g in groups]
    names = [next(iter(p)) for p in parents if len(p) == 1]
    if len(names) == len(groups) and len(set(names)) == len(names) and all(n != root.name for n in names):
        for g, name in zip(groups, names):
            g.label = name
    return RunSet(root, "folder", groups)
