"""Seed x grid sweeps: one config, a cartesian grid of overrides, several seeds, one folder.

    retainrl sweep configs/smoke.yaml --seeds 0,1,2 --grid method.name=plain,replay,ewc \\
        --grid rl.kl_coef=0,0.05 world.n_heldout=32 --out sweeps/cl [--parallel N]

Layout: `OUT/<grid-point label>/seed<k>/` is an ordinary run directory (config.yaml,
metrics.jsonl, summary.json, ...); the label lists the grid assignments,
`method.name=replay,rl.kl_coef=0.05` (`base` with no grid). Each run's config is
`load_config(RunConfig, CONFIG, overrides + grid assignments + ["seed=<k>"])`; every config is
built before the first run starts, so a bad grid key or value fails at once (ConfigError).

Resume: rerun the same command. A run whose summary.json exists is skipped; an unfinished run
resumes from its own checkpoint (Trainer's resume). A run folder holding a different config is
an error, never silently mixed in.

Parallelism: `--parallel 1` trains in this process, one run after another; `--parallel N > 1`
keeps N `python -m retainrl train ...` subprocesses going, each logging to `<run>/train.log`.
Every training process uses 2 torch threads and a 2-worker sandbox by default, so N > 1 pays off
only with about 4N cores.

Outputs next to the runs: sweep.json (grid, seeds, overrides, run folders and their status),
aggregate.json and aggregate.md (per grid point: mean, std, min, max, n over seeds of the
headline metrics, via `metrics.retention.aggregate_seeds`). A failed run is reported and left
out of the aggregate; the sweep then raises SweepError after writing what it has.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retainrl.config import ConfigError, apply_override, config_hash, load_config, read_yaml
from retainrl.metrics.retention import aggregate_seeds, format_aggregate
from retainrl.train.runio import atomic_write_text

# Metrics aggregated per grid point (target_gain/<l> added per phase); docs/METRICS.md.
AGGREGATE_METRICS = ("avg", "worst", "forgetting", "bwt", "fwt", "max_drop", "oscillation",
                     "tokens_generated", "verifier_cpu_s", "target_gain_mean", "avg_sampled", "worst_sampled",
                     "forgetting_sampled", "target_gain_mean_sampled")
_SAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


class SweepError(RuntimeError):
    """Some runs of a sweep failed (the others, and the aggregate over them, are written)."""


@dataclass
class SweepRun:
    label: str                  # grid point, e.g. "method.name=replay,rl.kl_coef=0.05"
    assignments: list[str]      # the grid's key=value overrides of this point
    seed: int
    overrides: list[str]        # everything passed to load_config after the config file
    run_dir: Path
    cfg: object = field(repr=False, default=None)

    @property
    def done(self) -> bool:
        return (self.run_dir / "summary.json").exists()


# ----------------------------------------------------------------------------- the grid


def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets/braces/quotes: `a,[b,c],'d,e'` -> ['a', '[b,c]', "'d,e'"]."""
    out, cur, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append("".join(cur).strip())
            cur = []
            continue
        cur.append(ch)
    out.append("".join(cur).strip())
    return out


def parse_grid(specs: Sequence[str] | Mapping[str, Sequence]) -> dict[str, list[str]]:
    """`["method.name=plain,replay", "rl.kl_coef=0,0.05"]` (or a dict) -> {key: [values]} in order.

    Values stay text (they go through the same parsing as command-line overrides). A key given
    twice, an empty value or a repeated value is a ConfigError; so is `seed` (use --seeds).
    """
    if isinstance(specs, Mapping):
        items = [(str(k), [v if isinstance(v, str) else json.dumps(v) for v in vs]) for k, vs in specs.items()]
    else:
        items = []
        for spec in specs:
            key, sep, raw = spec.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"grid {spec!r} is not of the form key=v1,v2,... (e.g. rl.kl_coef=0,0.05)")
            items.append((key.strip(), _split_values(raw)))
    grid: dict[str, list[str]] = {}
    for key, values in items:
        if key in grid:
            raise ConfigError(f"grid key {key!r} given twice", key)
        if key == "seed":
            raise ConfigError("grid key 'seed': give seeds with --seeds, not as a grid axis", key)
        if not values or any(v == "" for v in values):
            raise ConfigError(f"grid key {key!r}: empty value in {values}", key)
        if len(set(values)) != len(values):
            raise ConfigError(f"grid key {key!r}: repeated value in {values}", key)
        grid[key] = list(values)
    return grid


def expand_grid(grid: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Cartesian product, first key slowest: {a: [1, 2], b: [x]} -> [["a=1", "b=x"], ["a=2", "b=x"]]."""
    keys = list(grid)
    return [[f"{k}={v}" for k, v in zip(keys, combo)] for combo in itertools.product(*(grid[k] for k in keys))]


def point_label(assignments: Sequence[str]) -> str:
    """Folder-safe label of a grid point: assignments joined by commas, other characters -> '_'."""
    if not assignments:
        return "base"
    return _SAFE.sub("_", ",".join(assignments))


def parse_seeds(text: str | Sequence[int]) -> list[int]:
    """"0,1,2" -> [0, 1, 2]; a list passes through. Repeated seeds are an error."""
    seeds = [int(s) for s in text.split(",") if s.strip()] if isinstance(text, str) else [int(s) for s in text]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds must be distinct integers, got {text!r}", "seed")
    return seeds


# ----------------------------------------------------------------------------- planning


def _check_key(cls: type, assignment: str) -> None:
    """ConfigError naming the key when `assignment` names no config key or has a bad value."""
    apply_override(cls, {}, assignment)


def plan_sweep(config_path, overrides: Sequence[str], seeds, grid, out_dir) -> list[SweepRun]:
    """Every run of the sweep, its config built and validated (nothing is trained or written)."""
    from retainrl.train.config import RunConfig

    grid, seeds, out_dir = parse_grid(grid), parse_seeds(seeds), Path(out_dir)
    for key, values in grid.items():
        for v in values:
            _check_key(RunConfig, f"{key}={v}")
    points = expand_grid(grid)
    labels = [point_label(a) for a in points]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"two grid points share a folder label: {labels}")
    runs = []
    for assignments, label in zip(points, labels):
        for seed in seeds:
            ov = [*overrides, *assignments, f"seed={seed}"]
            cfg = load_config(RunConfig, config_path, ov)
            try:
                cfg.phase_skills()
            except ValueError as e:
                raise ConfigError(f"grid point {label}: {e}", "protocol") from None
            runs.append(SweepRun(label, list(assignments), seed, ov, out_dir / label / f"seed{seed}", cfg))
    return runs


def _check_existing(run: SweepRun) -> None:
    saved = run.run_dir / "config.yaml"
    if not saved.exists():
        return
    from retainrl.train.config import RunConfig

    try:
        old = load_config(RunConfig, saved)
    except ConfigError as e:
        raise ConfigError(f"{saved}: cannot read the saved config ({e}); remove the folder or use a new --out") from None
    if config_hash(old) != config_hash(run.cfg):
        raise ConfigError(f"{run.run_dir} holds a run with a different config than this sweep asks for; "
                          "use a new --out or the original overrides")


# ----------------------------------------------------------------------------- running


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _brief(run_dir: Path) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    return " ".join(f"{k}={s[k]:.3f}" for k in ("avg", "worst", "forgetting") if s.get(k) is not None)


def _train_here(run: SweepRun) -> None:
    from retainrl.train.trainer import Trainer

    Trainer(run.cfg, run.run_dir).run()


def _run_sequential(todo: list[SweepRun], total: int, done0: int) -> dict[str, str]:
    failed = {}
    for i, run in enumerate(todo, start=done0 + 1):
        _say(f"[sweep {i}/{total}] {run.label}/seed{run.seed}: training")
        t0 = time.monotonic()
        run.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            _train_here(run)
        except Exception:  # noqa: BLE001 - one bad run must not lose the others
            (run.run_dir / "error.txt").write_text(traceback.format_exc())
            failed[str(run.run_dir)] = "error.txt"
            _say(f"[sweep {i}/{total}] {run.label}/seed{run.seed}: FAILED (see {run.run_dir / 'error.txt'})")
            continue
        _say(f"[sweep {i}/{total}] {run.label}/seed{run.seed}: done in {time.monotonic() - t0:.0f}s  "
             f"{_brief(run.run_dir)}")
    return failed


def _train_command(config_path: Path, run: SweepRun) -> list[str]:
    return [sys.executable, "-m", "retainrl", "train", str(config_path), *run.overrides, "--out", str(run.run_dir.resolve())]


def _run_parallel(todo: list[SweepRun], total: int, done0: int, config_path: Path, parallel: int) -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    queue, active, failed, finished = list(todo), {}, {}, done0
    try:
        while queue or active:
            while queue and len(active) < parallel:
                run = queue.pop(0)
                run.run_dir.mkdir(parents=True, exist_ok=True)
                log = open(run.run_dir / "train.log", "a")
                proc = subprocess.Popen(_train_command(config_path, run), stdout=log, stderr=subprocess.STDOUT,
                                        env=env, cwd=root)
                active[proc] = (run, log, time.monotonic())
                _say(f"[sweep] started {run.label}/seed{run.seed} (pid {proc.pid}, log {run.run_dir / 'train.log'})")
            time.sleep(0.5)
            for proc in [p for p in active if p.poll() is not None]:
                run, log, t0 = active.pop(proc)
                log.close()
                finished += 1
                if proc.returncode == 0 and run.done:
                    _say(f"[sweep {finished}/{total}] {run.label}/seed{run.seed}: done in "
                         f"{time.monotonic() - t0:.0f}s  {_brief(run.run_dir)}")
                else:
                    failed[str(run.run_dir)] = "train.log"
                    _say(f"[sweep {finished}/{total}] {run.label}/seed{run.seed}: FAILED with exit code "
                         f"{proc.returncode} (see {run.run_dir / 'train.log'})")
    finally:  # interrupted: stop the processes this sweep started, they resume on the next call
        for proc in active:
            proc.terminate()
        for proc, (_, log, _) in active.items():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
    return failed


# ----------------------------------------------------------------------------- aggregation


def aggregate_runs(summaries: Sequence[Mapping]) -> dict[str, dict]:
    """`aggregate_seeds` restricted to AGGREGATE_METRICS and target_gain/<l>, in that order."""
    table = aggregate_seeds(summaries)
    keep = [*AGGREGATE_METRICS[:7], *sorted((k for k in table if k.startswith("target_gain/")),
                                            key=lambda k: int(k.split("/")[1])), *AGGREGATE_METRICS[7:]]
    return {k: table[k] for k in keep if k in table}


def _fmt(entry: Mapping, digits: int = 3) -> str:
    if entry.get("mean") is None:
        return "-"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def write_aggregate(out_dir, points: Sequence[Mapping]) -> dict:
    """Write aggregate.json and aggregate.md for `points` = [{label, assignments, runs: [dirs]}].

    Run folders are relative to out_dir; those without summary.json are left out (n counts the
    rest). Returns the aggregate as written to aggregate.json.
    """
    out_dir = Path(out_dir)
    result = {"metrics_doc": "docs/METRICS.md", "points": []}
    for p in points:
        dirs = [d for d in p["runs"] if (out_dir / d / "summary.json").exists()]
        summaries = [json.loads((out_dir / d / "summary.json").read_text()) for d in dirs]
        table = aggregate_runs(summaries) if summaries else {}
        result["points"].append({"label": p["label"], "assignments": list(p["assignments"]), "runs": dirs,
                                 "n_runs": len(dirs), "metrics": table})
    atomic_write_text(out_dir / "aggregate.json", json.dumps(result, indent=2))
    atomic_write_text(out_dir / "aggregate.md", format_sweep_markdown(result))
    return result


def format_sweep_markdown(result: Mapping) -> str:
    """aggregate.md: one overview table (mean ± std per grid point), then each point's full table."""
    names = list(dict.fromkeys(k for p in result["points"] for k in p["metrics"]))
    lines = ["# Sweep aggregate", "",
             "Mean ± sample std over seeds (n runs per point); definitions in docs/METRICS.md.", "",
             "| grid point | runs | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    digits = {"tokens_generated": 0, "verifier_cpu_s": 2}
    for p in result["points"]:
        cells = [_fmt(p["metrics"][k], digits.get(k, 3)) if k in p["metrics"] else "-" for k in names]
        lines.append(f"| {p['label']} | {p['n_runs']} | " + " | ".join(cells) + " |")
    for p in result["points"]:
        lines += ["", f"## {p['label']}", ""]
        lines.append(format_aggregate(p["metrics"]) if p["metrics"] else "(no finished runs)")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- entry point


def run_sweep(config_path, overrides: Sequence[str] = (), seeds="0", grid=(), out_dir="sweeps/sweep",
              parallel: int = 1) -> Path:
    """Train every (grid point, seed) run not yet finished, then write sweep.json and the aggregate.

    config_path: YAML config; overrides: key=value applied to every run; seeds: "0,1,2" or a
    list; grid: ["key=v1,v2", ...] or {key: [values]}; parallel: concurrent training processes.
    Returns the sweep folder. Raises ConfigError before any training for a bad key or value,
    SweepError after writing the outputs if a run failed.
    """
    if parallel < 1:
        raise ValueError(f"parallel must be >= 1, got {parallel}")
    config_path, out_dir = Path(config_path).resolve(), Path(out_dir)
    read_yaml(config_path)  # an unreadable config is a ConfigError naming the file
    grid_d = parse_grid(grid)
    runs = plan_sweep(config_path, list(overrides), seeds, grid_d, out_dir)
    for run in runs:
        _check_existing(run)
    todo = [r for r in runs if not r.done]
    _say(f"[sweep] {len(runs)} runs ({len(runs) // len(parse_seeds(seeds))} grid points x "
         f"{len(parse_seeds(seeds))} seeds) in {out_dir}; {len(runs) - len(todo)} already finished, "
         f"{len(todo)} to train" + (f", {parallel} at a time" if parallel > 1 and todo else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = list(dict.fromkeys(r.label for r in runs))
    points = [{"label": lab, "assignments": next(r.assignments for r in runs if r.label == lab),
               "runs": [f"{lab}/seed{r.seed}" for r in runs if r.label == lab]} for lab in labels]
    meta = {"config": str(config_path), "overrides": list(overrides), "grid": grid_d,
            "seeds": parse_seeds(seeds), "points": points}
    atomic_write_text(out_dir / "sweep.json", json.dumps({**meta, "status": "running"}, indent=2))
    done0 = len(runs) - len(todo)
    if parallel == 1:
        failed = _run_sequential(todo, len(runs), done0)
    else:
        failed = _run_parallel(todo, len(runs), done0, config_path, parallel)
    status = {f"{r.label}/seed{r.seed}": "done" if r.done else "failed" for r in runs}
    atomic_write_text(out_dir / "sweep.json", json.dumps({**meta, "status": "finished", "runs": status}, indent=2))
    write_aggregate(out_dir, points)
    _say(f"[sweep] wrote {out_dir / 'sweep.json'}, {out_dir / 'aggregate.md'}")
    if failed:
        raise SweepError(f"{len(failed)} of {len(runs)} runs failed: " +
                         ", ".join(f"{d} (see {log})" for d, log in failed.items()))
    return out_dir


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retainrl sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="YAML experiment config")
    p.add_argument("overrides", nargs="*", help="key=value overrides applied to every run")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis; repeat for a cartesian product")
    p.add_argument("--out", required=True, help="sweep folder (rerun the same command to resume)")
    p.add_argument("--parallel", type=int, default=1, help="training processes at a time (default 1)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)  # overrides may sit between or after options
    try:
        run_sweep(args.config, args.overrides, args.seeds, args.grid, args.out, args.parallel)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except SweepError as e:
        print(f"sweep: {e}", file=sys.stderr)
        return 1
    return 0
