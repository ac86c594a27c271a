"""Issue 11's measurements on a bundled model, resumable: single-skill gains, the other
algorithms, sequential orders, the 4-skill sequence and the mixed protocol, plain RL throughout.

    python benchmarks/testbed_v4.py run single seq --seeds 0,1,2 [--model DIR] [--root runs/v4] [--parallel 2]
    python benchmarks/testbed_v4.py summary [--root runs/v4]

Groups (every run is `retainrl train` on configs/gain_v3.yaml or configs/seq_v3.yaml):
    single  GRPO on each of gen, repair, reason, refactor alone (40 steps, all four skills measured)
    algos   PPO and RLOO on repair and reason alone (--algo_skills to change)
    seq     gen -> repair -> reason and reason -> repair -> gen (20 steps per phase)
    seq4    gen -> repair -> reason -> refactor
    mixed   one 60-step phase of gen, repair, reason mixed
A run whose folder holds summary.json is skipped, so a killed batch resumes where it stopped;
a run that failed leaves its log (<out>.log) and is retried on the next call.
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKILLS4 = ("gen", "repair", "reason", "refactor")
ALGO_SKILLS = ("repair", "reason")   # the skills of the `algos` group (--algo_skills)


def jobs(group: str, seeds: list[int], algo_skills: tuple[str, ...] = ALGO_SKILLS) -> list[tuple[str, list[str]]]:
    """(run name, arguments after `retainrl train`) for one group."""
    out = []
    for s in seeds:
        if group == "single":
            out += [(f"single/{k}-s{s}", ["configs/gain_v3.yaml", f"protocol.phases=[{k}]", f"seed={s}"]) for k in SKILLS4]
        elif group == "algos":
            # the same budget as GRPO: 8 prompts x 8 samples per step
            out += [(f"algos/{a}-{k}-s{s}", ["configs/gain_v3.yaml", f"protocol.phases=[{k}]", f"seed={s}", f"rl.algo={a}"])
                    for a in ("ppo", "rloo") for k in algo_skills]
        elif group == "seq":
            out += [(f"seq/grr-s{s}", ["configs/seq_v3.yaml", f"seed={s}"]),
                    (f"seq/rrg-s{s}", ["configs/seq_v3.yaml", f"seed={s}", "protocol.phases=[reason,repair,gen]"])]
        elif group == "seq4":
            out += [(f"seq4/grrr-s{s}", ["configs/seq_v3.yaml", f"seed={s}", "protocol.phases=[gen,repair,reason,refactor]",
                                         "data.world_skills=[gen,repair,reason,refactor]"])]
        elif group == "mixed":
            out += [(f"mixed/mixed-s{s}", ["configs/seq_v3.yaml", f"seed={s}", "protocol.kind=mixed",
                                           "protocol.steps_per_phase=60"])]
        else:
            raise SystemExit(f"unknown group {group!r}; known: single, algos, seq, seq4, mixed")
    return out


def run_one(name: str, args: list[str], root: Path, model: str, sets: tuple[str, ...] = ()) -> str:
    out = root / name
    if (out / "summary.json").exists():
        return f"skip {name}"
    out.parent.mkdir(parents=True, exist_ok=True)
    extra = ([f"model.name_or_path={model}"] if model else []) + list(sets)
    cmd = [sys.executable, "-m", "retainrl", "train", *args, *extra, "sandbox_workers=1", "--out", str(out)]
    start = time.time()
    with open(f"{out}.log", "w") as log:
        rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return f"{'done' if rc == 0 else f'FAILED rc={rc}'} {name} in {time.time() - start:.0f}s"


def run(groups: list[str], seeds: list[int], root: Path, model: str, parallel: int, sets: tuple[str, ...] = (),
        algo_skills: tuple[str, ...] = ALGO_SKILLS) -> None:
    todo = [j for g in groups for j in jobs(g, seeds, algo_skills)]
    print(f"{len(todo)} runs under {root}", flush=True)
    with ThreadPoolExecutor(parallel) as pool:
        for i, msg in enumerate(pool.map(lambda j: run_one(*j, root, model, sets), todo), 1):
            print(f"[{i}/{len(todo)}] {time.strftime('%H:%M:%S')} {msg}", flush=True)


def ms(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    return f"{st.mean(values):+.3f} ± {st.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:+.3f}"


def habits(path: Path) -> dict[tuple[int, str], float]:
    """{(step, skill): habit share} from a run's eval records."""
    out = {}
    for line in (path / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("kind") == "eval" and "habit_share" in rec:
            out[(rec["step"], rec["skill"])] = rec["habit_share"]
    return out


def summary(root: Path) -> None:
    def load(pattern):
        return [(p.parent, json.loads(p.read_text())) for p in sorted(root.glob(pattern))]

    for group, pattern in (("single", "single/*/summary.json"), ("algos", "algos/*/summary.json")):
        by = {}
        for path, r in load(pattern):
            key = path.name.rsplit("-s", 1)[0]
            skill = r["phases"][0]
            h = habits(path)
            last = max(step for step, _ in h) if h else None
            by.setdefault(key, []).append((r, h.get((0, skill)), h.get((last, skill))))
        if by:
            print(f"\n## {group}: own-skill gain (greedy held-out pass@1), habit share start -> end, others' change")
        for key, rows in by.items():
            gains = [r["target_gain"][0] for r, _, _ in rows]
            skill = rows[0][0]["phases"][0]
            others = {s: ms([r["final"][s] - r["R"][0][r["skills"].index(s)] for r, _, _ in rows])
                      for s in rows[0][0]["skills"] if s != skill}
            print(f"{key}: n={len(rows)} gain {ms(gains)} (each {', '.join(f'{g:+.3f}' for g in gains)}); "
                  f"habit {ms([a for _, a, _ in rows])} -> {ms([b for _, _, b in rows])}; others {others}")
    for group in ("seq", "seq4", "mixed"):
        by = {}
        for path, r in load(f"{group}/*/summary.json"):
            by.setdefault(path.name.rsplit("-s", 1)[0], []).append(r)
        for key, rows in by.items():
            phases = " -> ".join(p if isinstance(p, str) else "+".join(p) for p in rows[0]["phases"])
            print(f"\n## {group} {key} ({phases}), n={len(rows)}")
            for r in rows:
                print(f"  seed {r['seed']}: R {r['R']} gains {[round(g, 3) for g in r['target_gain']]} "
                      f"forgetting {r['forgetting']} worst {r['worst']} avg {r['avg']:.3f}")
            gains = list(zip(*[r["target_gain"] for r in rows]))
            print(f"  forgetting {ms([r['forgetting'] for r in rows])}, worst {ms([r['worst'] for r in rows])}, "
                  f"avg {ms([r['avg'] for r in rows])}, phase gains " + " / ".join(ms(list(g)) for g in gains))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("run", "summary"))
    parser.add_argument("groups", nargs="*")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/v4")
    parser.add_argument("--model", default="", help="model.name_or_path (default: the configs' bundled model)")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run, e.g. world.version=3 (repeatable)")
    parser.add_argument("--algo_skills", default=",".join(ALGO_SKILLS), help="skills of the algos group (comma-separated)")
    a = parser.parse_args()
    if a.set and a.root == parser.get_default("root"):
        # a run whose folder exists is skipped, whatever its config: overridden runs need their own root
        raise SystemExit("--set changes every run's config: give it its own --root (runs/v4 holds the plain runs)")
    root = (ROOT / a.root).resolve()
    if a.command == "run":
        run(a.groups, [int(s) for s in a.seeds.split(",")], root, a.model, a.parallel, tuple(a.set),
            tuple(k for k in a.algo_skills.split(",") if k) or ALGO_SKILLS)
    summary(root)


if __name__ == "__main__":
    main()
