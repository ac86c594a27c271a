"""The `retainrl` command: eval | verify-demo | demo.

    retainrl eval --model bundled --skills gen,repair,reason,refactor --limit 200 --json
    retainrl verify-demo [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

DEFAULT_DATA = Path(os.environ.get("RETAINRL_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def cmd_eval(args) -> int:
    from retainrl.data.world import WorldConfig, make_world
    from retainrl.evaluate import evaluate
    from retainrl.policy.model import ModelConfig, load_policy
    from retainrl.policy.rollout import SamplingConfig
    from retainrl.verify import Sandbox

    skills = [s.strip() for s in args.skills.split(",") if s.strip()]
    try:
        world = make_world(WorldConfig(seed=args.world_seed, n_train=0, n_heldout=args.limit, skills=tuple(skills),
                                       version=args.world_version))
    except ValueError as e:
        print(f"retainrl eval: {e}", file=sys.stderr)
        return 2
    policy = load_policy(ModelConfig(name_or_path=args.model, threads=args.threads))
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens)
    with Sandbox(workers=args.workers) as sb:
        res = evaluate(policy, {s: world[s]["heldout"] for s in skills}, sb, sampling)
    if args.json:
        print(json.dumps({s: r["pass@1"] for s, r in res.items()}))
    else:
        for s, r in res.items():
            habit = (f"habit share {r['habit_share']:.3f}, pass@1 with it undone {r['habit_undone_pass@1']:.3f}, "
                     if "habit_share" in r else "")
            print(f"{s:8s} pass@1 = {r['pass@1']:.3f}  (n={r['n']}, {habit}tokens={r['tokens']}, "
                  f"verify cpu {r['verify_cpu_s']:.1f}s)")
    return 0


def cmd_train(args) -> int:
    from retainrl.config import ConfigError, describe, load_config
    from retainrl.train.config import RunConfig
    from retainrl.train import distributed
    from retainrl.train.trainer import Trainer

    if args.help_config:
        print(describe(RunConfig))
        return 0
    if not args.config:
        print("retainrl train: a CONFIG file is required (see configs/)", file=sys.stderr)
        return 2
    cfg = load_config(RunConfig, args.config, args.overrides)  # ConfigError: main() prints it, exit 2
    out = args.out or str(Path("runs") / cfg.name)
    try:
        trainer = Trainer(cfg, out)
    except ConfigError:
        raise
    except (ValueError, FileNotFoundError) as e:  # data, skills or ranks that do not fit the config
        print(f"retainrl train: {e}", file=sys.stderr)
        return 2
    try:
        summary = trainer.run()
    finally:
        distributed.teardown(trainer.dist)
    if trainer.dist.main:  # under torchrun: one report, from rank 0
        keys = ("avg", "worst", "forgetting", "bwt", "fwt", "max_drop")
        print(json.dumps({k: summary.get(k) for k in keys}))
        print(f"run directory: {out}")
    return 0


DEMO_METHODS = {
    "plain": ["method.name=plain"],
    "safe": ["method.name=plain", "safety.enabled=true"],
    "replay": ["method.name=replay"],
    "ewc": ["method.name=ewc"],
    "l2sp": ["method.name=l2sp"],
    "kl": ["method.name=plain", "rl.kl_coef=0.05"],
    "safe+replay": ["method.name=replay", "safety.enabled=true"],
    # the eps sweep of the default (prompt_ll, phase budget; eps = 0.02): the loss of each memory
    # prompt's answer log-likelihood allowed from the phase start, in nats per token
    "safe-eps0.005": ["method.name=plain", "safety.enabled=true", "safety.eps=0.005"],
    "safe-eps0.1": ["method.name=plain", "safety.enabled=true", "safety.eps=0.1"],
    # the seed's constraint: one averaged GRPO-surrogate row per skill, re-linearised every step (A-GEM-like)
    "safe-mean": ["method.name=plain", "safety.enabled=true", "safety.constraint=skill_mean", "safety.budget=step",
                  "safety.eps_mode=relative", "safety.eps=0.0"],
}


def real_benchmark_overrides(data: Path) -> list[str] | None:
    """The demo on the real benchmarks instead of the built-in world: gen = HumanEval + MBPP,
    repair = HumanEvalFix + QuixBugs, reason = CRUXEval (output prediction), each split by a
    fixed content hash (30% held out, at most 100 held-out tasks per skill)."""
    sources = [("humaneval", "humaneval", ""), ("mbpp", "mbpp", ""), ("humanevalfix", "humanevalpack", ""),
               ("quixbugs", "quixbugs", ""), ("cruxeval", "cruxeval", "")]
    items = ", ".join(f"{{name: {name}, path: '{data / folder}'}}" for name, folder, _ in sources
                      if (data / folder).exists())
    if not items:
        return None
    return [f"data.sources=[{items}]", "data.world=false", "data.max_heldout_per_skill=100",
            "sampling.max_new_tokens=256", "eval.max_new_tokens=256"]


def cmd_demo(args) -> int:
    """Sequential gen -> repair -> reason on the bundled model: plain GRPO vs skill-safe GRPO vs replay."""
    from rich.console import Console
    from rich.table import Table

    from retainrl.config import load_config
    from retainrl.metrics.retention import aggregate_seeds
    from retainrl.report import run_report
    from retainrl.train.config import RunConfig
    from retainrl.train.trainer import Trainer

    console = Console()
    config = Path(args.config)
    out = Path(args.out)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown:
        console.print(f"[red]unknown method(s) {unknown}; choose from {sorted(DEMO_METHODS)}[/red]")
        return 2
    seeds = [int(s) for s in args.seeds.split(",")]
    extra = [f"model.name_or_path={args.model}"]
    if args.data:
        if not Path(args.data).is_dir():
            console.print(f"[red]--data {args.data}: no such folder[/red]")
            return 2
        real = real_benchmark_overrides(Path(args.data))
        if real is None:
            console.print(f"[red]--data {args.data}: none of humaneval/, mbpp/, humanevalpack/, quixbugs/, "
                          f"cruxeval/ in it[/red]")
            return 2
        extra += real
    extra += list(args.overrides)
    t0 = time.monotonic()
    summaries: dict[str, list[dict]] = {}
    for method in methods:
        for seed in seeds:
            run_dir = out / method / f"seed{seed}"
            cfg = load_config(RunConfig, config, DEMO_METHODS[method] + extra + [f"seed={seed}", f"name=demo-{method}"])
            console.print(f"[bold]== {method}, seed {seed}[/bold] -> {run_dir}")
            if not (run_dir / "summary.json").exists():
                Trainer(cfg, run_dir).run()
            summaries.setdefault(method, []).append(json.loads((run_dir / "summary.json").read_text()))
    files = run_report(out)
    table = Table(title=f"retainrl demo: {' -> '.join(str(p) for p in summaries[methods[0]][0]['phases'])} "
                        f"({len(seeds)} seed{'s' if len(seeds) > 1 else ''}, {time.monotonic() - t0:.0f} s)")
    for col in ("method", "avg", "worst", "forgetting", "target gain", "tokens"):
        table.add_column(col, justify="right" if col != "method" else "left")
    for method, runs in summaries.items():
        agg = aggregate_seeds(runs)

        def cell(key, digits=3):
            e = agg.get(key) or {}
            if e.get("mean") is None:
                return "-"
            return f"{e['mean']:.{digits}f}" + (f" ± {e['std']:.{digits}f}" if len(runs) > 1 else "")
        table.add_row(method, cell("avg"), cell("worst"), cell("forgetting"), cell("target_gain_mean"),
                      cell("tokens_generated", 0))
    console.print(table)
    report = files.get("report.html")
    console.print(f"report: {report}")
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
    e.add_argument("--skills", default="gen,repair,reason", help="comma-separated; world versions 2 to 6 add refactor")
    e.add_argument("--limit", type=int, default=100, help="held-out tasks per skill")
    e.add_argument("--world-seed", type=int, default=0)
    e.add_argument("--world-version", type=int, default=2, help="built-in world version (1 to 6)")
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
    sub.add_parser("analyze", help="interference matrices: gradient cosines and empirical transfer (retainrl analyze --help)")
    sub.add_parser("report", help="report.html, summary.md, tables.tex and figures (retainrl report --help)")

    d = sub.add_parser("verify-demo", help="verify real benchmark references, broken and hostile completions")
    d.add_argument("--data", default=str(DEFAULT_DATA), help="folder holding the benchmark files")
    d.add_argument("--limit", type=int, default=10_000, help="tasks per benchmark")
    d.add_argument("--workers", type=int, default=2)
    d.set_defaults(func=cmd_verify_demo)

    m = sub.add_parser("demo", help="sequential gen -> repair -> reason: plain GRPO vs skill-safe GRPO vs replay")
    m.add_argument("overrides", nargs="*", help="key=value config overrides for every run")
    m.add_argument("--config", default=str(Path(__file__).resolve().parent / "configs" / "demo.yaml"))
    m.add_argument("--methods", default="plain,safe,replay", help=f"comma list of {sorted(DEMO_METHODS)}")
    m.add_argument("--seeds", default="0", help="comma list of seeds")
    m.add_argument("--model", default="bundled", help="'bundled', a model directory or a hub id")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--data", default="", help="folder with the real benchmarks (e.g. ../shared/data): train and "
                                              "evaluate on HumanEval+MBPP / HumanEvalFix+QuixBugs / CRUXEval "
                                              "instead of the built-in world")
    m.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Bad input and the operating system's refusals end in one line naming what
    and where, exit code 2, no traceback: a ConfigError (a config key or file), a RunError (a run
    folder, checkpoint or file that cannot be written, e.g. a full disk), a ModelLoadError, or an
    OSError. Everything else is a bug and keeps its traceback."""
    from retainrl.config import ConfigError
    from retainrl.policy.model import ModelLoadError
    from retainrl.train.runio import RunError

    # warnings in one line each (the default adds a line of source code under every message)
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    try:
        return _dispatch(sys.argv[1:] if argv is None else list(argv))
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
    except (RunError, ModelLoadError) as e:
        print(f"retainrl: {e}", file=sys.stderr)
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        print(f"retainrl: cannot access{where}: {e.strerror or e}", file=sys.stderr)
    return 2


def _dispatch(argv: list[str]) -> int:
    # sweep and report own their argument parsers (retainrl/train/sweep.py, retainrl/report).
    if argv and argv[0] == "sweep":
        from retainrl.train.sweep import main as sweep_main

        return sweep_main(argv[1:])
    if argv and argv[0] == "analyze":
        from retainrl.analysis import main as analyze_main

        return analyze_main(argv[1:])
    if argv and argv[0] == "report":
        from retainrl.report import main as report_main

        return report_main(argv[1:])
    parser = build_parser()
    # `key=value` overrides may come after options too (`train cfg --out d rl.lr=1e-3`); argparse
    # alone would stop at the first option, so collect the stragglers here.
    args, rest = parser.parse_known_args(argv)
    stray = [r for r in rest if not r.startswith("-") and "=" in r]
    if len(stray) != len(rest) or (stray and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if stray:
        args.overrides = list(args.overrides) + stray
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
