"""The `retainrl` command: eval | verify-demo | demo.

    retainrl eval --model bundled --skills gen,repair,reason --limit 100 --json
    retainrl verify-demo [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("RETAINRL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def cmd_eval(args) -> int:
    from retainrl.data.world import WorldConfig, make_world
    from retainrl.evaluate import evaluate
    from retainrl.policy.model import ModelConfig, load_policy
    from retainrl.policy.rollout import SamplingConfig
    from retainrl.verify import Sandbox

    skills = [s.strip() for s in args.skills.split(",") if s.strip()]
    world = make_world(WorldConfig(seed=args.world_seed, n_train=0, n_heldout=args.limit, skills=tuple(skills)))
    policy = load_policy(ModelConfig(name_or_path=args.model, threads=args.threads))
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    with Sandbox(workers=args.workers) as sb:
        res = evaluate(policy, {s: world[s]["heldout"] for s in skills}, sb, sampling)
    if args.json:
        print(json.dumps({s: r["pass@1"] for s, r in res.items()}))
    else:
        for s, r in res.items():
            print(f"{s:8s} pass@1 = {r['pass@1']:.3f}  (n={r['n']}, tokens={r['tokens']}, verify cpu {r['verify_cpu_s']:.1f}s)")
    return 0


def cmd_train(args) -> int:
    from retainrl.config import ConfigError, describe, load_config
    from retainrl.train.config import RunConfig
    from retainrl.train.trainer import Trainer

    if args.help_config:
        print(describe(RunConfig))
        return 0
    if not args.config:
        print("retainrl train: a CONFIG file is required (see configs/)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(RunConfig, args.config, args.overrides)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    out = args.out or str(Path("runs") / cfg.name)
    summary = Trainer(cfg, out).run()
    keys = ("avg", "worst", "forgetting", "bwt", "fwt", "max_drop")
    print(json.dumps({k: summary.get(k) for k in keys}))
    print(f"run directory: {out}")
    return 0


def cmd_verify_demo(args) -> int:
    """Verify real benchmark reference solutions, broken versions and hostile programs."""
    from rich.console import Console
    from rich.table import Table

    from retainrl.data.loaders import load_benchmark
    from retainrl.verify import Sandbox
    from retainrl.verify.checks import verify_many

    console = Console()
    data = Path(args.data)
    if not data.exists():
        console.print(f"[red]benchmark data not found at {data}[/red]; pass --data DIR (see README: Data)")
        return 2
    sets = [("humaneval", data / "humaneval" / "HumanEval.jsonl.gz", {}),
            ("mbpp", data / "mbpp" / "mbpp.jsonl", {}),
            ("cruxeval", data / "cruxeval" / "cruxeval.jsonl", {}),
            ("humanevalfix", data / "humanevalpack" / "humanevalpack_python.jsonl", {})]
    table = Table(title="Verifier demo: reference vs. broken vs. hostile completions")
    for col in ("benchmark", "skill", "tasks", "reference pass", "broken pass", "hostile pass", "programs/s"):
        table.add_column(col)
    hostile = ("class L:\n    def __eq__(s, o): return True\n    def __ne__(s, o): return False\n"
               "def {name}(*a, **k):\n    return L()\n")
    with Sandbox(workers=args.workers) as sb:
        for name, path, kw in sets:
            tasks = load_benchmark(name, path, **kw)[: args.limit]
            t0 = time.monotonic()
            ref = verify_many(sb, [(t, t.reference or "") for t in tasks])
            broken = verify_many(sb, [(t, _break(t)) for t in tasks])
            bad = verify_many(sb, [(t, hostile.format(name=t.entry_point or "f")
                                    if t.check == "unit_tests" else "__import__('os')._exit(0)") for t in tasks])
            rate = 3 * len(tasks) / (time.monotonic() - t0)
            table.add_row(name, tasks[0].skill if tasks else "-", str(len(tasks)), f"{sum(v.passed for v in ref)}",
                          f"{sum(v.passed for v in broken)}", f"{sum(v.passed for v in bad)}", f"{rate:.0f}")
            console.print(f"  {name}: done")
    console.print(table)
    return 0


def _break(task) -> str:
    """A plausible wrong completion: the reference with its first return value negated, or a wrong literal."""
    ref = task.reference or ""
    if task.check == "output_prediction":
        return "'definitely not the answer'"
    return ref.replace("return ", "return not ", 1) if "return " in ref else "pass\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retainrl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("eval", help="greedy pass@1 per skill on the built-in world's held-out tasks")
    e.add_argument("--model", default="bundled", help="'bundled' or a Hugging Face model directory / hub id")
    e.add_argument("--skills", default="gen,repair,reason")
    e.add_argument("--limit", type=int, default=100, help="held-out tasks per skill")
    e.add_argument("--world-seed", type=int, default=0)
    e.add_argument("--max-new-tokens", type=int, default=96)
    e.add_argument("--workers", type=int, default=2, help="sandbox workers")
    e.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    e.add_argument("--json", action="store_true", help="print one JSON object {skill: pass@1}")
    e.set_defaults(func=cmd_eval)

    t = sub.add_parser("train", help="train with a YAML config plus key=value overrides")
    t.add_argument("config", nargs="?", help="YAML experiment config (see configs/)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, dotted for nested keys (rl.lr=1e-3)")
    t.add_argument("--out", help="run directory (default runs/<name>); rerun the same command to resume")
    t.add_argument("--help-config", action="store_true", help="list every config field and exit")
    t.set_defaults(func=cmd_train)

    sub.add_parser("sweep", help="seeds x grid of train runs with an aggregate table (retainrl sweep --help)")
    sub.add_parser("report", help="report.html, summary.md, tables.tex and figures (retainrl report --help)")

    for name in ("verify-demo", "demo"):
        d = sub.add_parser(name, help="verify real benchmark references, broken and hostile completions")
        d.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding the benchmark files")
        d.add_argument("--limit", type=int, default=10_000, help="tasks per benchmark")
        d.add_argument("--workers", type=int, default=2)
        d.set_defaults(func=cmd_verify_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # sweep and report own their argument parsers (retainrl/train/sweep.py, retainrl/report).
    if argv and argv[0] == "sweep":
        from retainrl.train.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv and argv[0] == "report":
        from retainrl.report import main as report_main

        return report_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
