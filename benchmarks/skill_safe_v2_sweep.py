"""Issue 12, section 3: skill-safe GRPO against the continual-learning baselines on the sequential
testbed, resumable, with a per-method summary and a Pareto check.

    nice -n 19 python benchmarks/skill_safe_v2_sweep.py run   [--methods plain,kl,...] [--seeds 0,1,2]
        [--orders grr,rrg] [--world_seeds 0] [--profile small] [--model DIR] [--parallel 1]
        [--strength l2sp=0.1,1,10] [--set key=value ...] [--root runs/ssv2] [--dry]
    python benchmarks/skill_safe_v2_sweep.py status  [same selection]
    python benchmarks/skill_safe_v2_sweep.py summary [same selection] [--out runs/ssv2/summary.md]
    python benchmarks/skill_safe_v2_sweep.py diag    [same selection]   (the safe variants' layer diagnostics)
    python benchmarks/skill_safe_v2_sweep.py select  [same selection]   (each method's variant by the fixed rule)

Orders: grr gen -> repair -> reason, rrg the reverse, mixed one phase of the three skills mixed,
three phases long (safe variants then protect every skill of it).

A run is `retainrl train configs/seq_v3.yaml <profile> <order> <method variant> seed=S world.seed=W
[--set ...] --out ROOT/<order>/w<W>/<variant>/s<S>` (world.seed draws the tasks; seed the
initialisation, sampling and task order). A run whose folder holds summary.json is skipped; an
unfinished one is started again with the same command and resumes from its own checkpoint
(Trainer's resume), so a killed sweep continues where it stopped. A config that differs from
the one in an existing folder fails that run (its log says so): use a new --root.

Methods (`--methods`, each expanded into its variants; `--strength NAME=v1,v2,...` replaces a
method's strengths):
    plain        GRPO alone
    kl           rl.kl_coef (k3 KL to the base model, per token)         strengths 0.01, 0.05, 0.2
    replay       method.name=replay, method.replay_fraction               0.125, 0.25, 0.5
    ewc          method.name=ewc, method.ewc_lambda                       10, 100, 1000
    l2sp         method.name=l2sp, method.l2sp_lambda                     0.1, 1, 10
    safe         skill-safe variants, constraint x budget x eps (SAFE_VARIANTS; strengths pick by
                 name, e.g. --strength safe=pll-phase-0.02,trust-0.0002)
    safe+replay  the safe variants named by --strength safe+replay=... (default pll-phase-0.02)
                 with method.name=replay, replay_fraction 0.25
    safe+ewc     the default safe variant (pll-phase-0.02) with method.name=ewc, method.ewc_lambda  10, 100
    safe+l2sp    the default safe variant with method.name=l2sp, method.l2sp_lambda           0.01, 0.03
    softmin      GRPO with protocol.skill_weighting=softmin, protocol.softmin_temperature  0.05, 0.2
                 (mixed order only: prompts steered towards the skill with the lowest reward)
    safe+softmin the default safe variant (pll-phase-0.02) with the softmin weighting         0.05, 0.2

Profiles (`--profile`): "full" is configs/seq_v3.yaml as it is (20 steps per phase, 200 held-out
tasks per skill, evaluation every 10 steps); "small" keeps the training (the same steps, batch
and world) and cuts evaluation to 100 held-out tasks per skill at phase ends only (eval.every=0;
one task = 0.01 of pass@1), the cost that matters on 2 cores; "tiny" is "small" with 10 steps per
phase (the demo's length; less forgetting to measure, half the training cost).

Summary: per (order, world seed) and pooled over both, per variant over seeds: forgetting,
target gain (target_gain_mean: mean over phases of the trained skill's gain in its phase),
worst and avg final pass@1, mean ± sd (n runs); forgetting and gain relative to plain GRPO in the
same group; the Pareto front on (forgetting low, target gain high) of the variant means; and, for
the safe variants, the issue's bar (forgetting <= 50% of plain, gain >= 80% of plain).
"""

from __future__ import annotations

import argparse
import json
import statistics as st
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/seq_v3.yaml"

ORDERS = {"grr": "[gen,repair,reason]", "rrg": "[reason,repair,gen]", "mixed": "[gen,repair,reason]"}
PROFILES = {"full": [], "small": ["world.n_heldout=100", "eval.every=0"],
            "tiny": ["world.n_heldout=100", "eval.every=0", "protocol.steps_per_phase=10"]}

# Skill-safe variants: name -> overrides (on top of safety.enabled=true). eps in J units (token-mean
# log-likelihood of the memory answers) for budget=phase / absolute; trust-region delta in nats per token.
# Every variant names constraint, budget, eps_mode and eps, so none depends on SafetyConfig's defaults
# (which moved to pll-phase-0.02 after this sweep's tuning half: LOG 2026-12-01 session 6).
_ABS = ["safety.eps_mode=absolute", "safety.act_subspace=off"]  # act: the variants that name it turn it on
_STEP = ["safety.budget=step"]
SAFE_VARIANTS = {
    "mean-step": ["safety.constraint=skill_mean", *_STEP, "safety.eps_mode=relative", "safety.eps=0.0"],  # the seed's (A-GEM-like)
    "pll-step": ["safety.constraint=prompt_ll", *_STEP, *_ABS, "safety.eps=0.0"],   # GEM, re-linearised
    **{f"pll-phase-{e}": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, f"safety.eps={e}"]
       for e in ("0.005", "0.02", "0.1", "1.0")},                                   # the eps sweep
    "sub-phase-0.02": ["safety.constraint=prompt_ll_subspace", "safety.budget=phase", *_ABS, "safety.eps=0.02"],
    # the same with the protected rows recomputed every 5 steps (the overhead option, safety.rows_every)
    "pll-phase-0.02-r5": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=0.02",
                          "safety.rows_every=5"],
    # the cost options of session 7: rows recomputed every 2nd step; 4 constraint prompts per skill per step
    "pll-phase-0.02-r2": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=0.02",
                          "safety.rows_every=2"],
    "pll-phase-0.02-b4": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=0.02",
                          "safety.batch_prompts=4"],
    # the same with the answers kept for the whole phase (safety.refresh_every=0: one refresh per phase
    # start instead of every 10 steps; the cost option of session 7)
    "pll-phase-0.02-rp": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=0.02",
                          "safety.refresh_every=0"],
    # the same with every non-held-out memory prompt constrained at every step (32 - 4 held out): coverage
    "pll-phase-0.02-b28": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=0.02",
                           "safety.batch_prompts=28"],
    # the default with the activation-subspace projection of session 8 (safety.act_subspace=both at two
    # energies), and the subspace with rows that never bind (eps 1.0): is it the subspace or the rows?
    **{f"pll-phase-0.02-act-{e}": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=0.02",
                                   "safety.act_subspace=both", f"safety.act_energy={e}"] for e in ("0.5", "0.7")},
    "pll-phase-1.0-act-0.7": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=1.0",
                              "safety.act_subspace=both", "safety.act_energy=0.7"],
    # session 9: the subspace one-sided (a layer whose removed part helps every protected skill keeps it)
    "pll-phase-0.02-act-0.7-os": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=0.02",
                                  "safety.act_subspace=both", "safety.act_energy=0.7", "safety.act_one_sided=true"],
    # session 10: the default's cost options, 4 constraint prompts per skill per step / rows every 5th step
    **{f"pll-phase-0.02-act-0.7-{tag}": ["safety.constraint=prompt_ll", "safety.budget=phase", *_ABS, "safety.eps=0.02",
                                         "safety.act_subspace=both", "safety.act_energy=0.7", opt]
       for tag, opt in (("b4", "safety.batch_prompts=4"), ("r5", "safety.rows_every=5"))},
    # the trust region alone (eps = 1 per step never binds): |J_p - J_p(phase start)| <= sqrt(2 delta) to
    # second order, two-sided; delta 0.0002 gives the radius 0.02 of pll-phase-0.02's one-sided budget
    **{f"trust-{d}": ["safety.constraint=prompt_ll", *_STEP, *_ABS, "safety.eps=1.0", f"safety.trust_region={d}"]
       for d in ("0.0002", "0.002")},
}
# SafetyConfig's batch_prompts moved from 8 to 4 (session 10): the variants measured before keep their 8
SAFE_VARIANTS = {name: ov if any(o.startswith("safety.batch_prompts=") for o in ov) else [*ov, "safety.batch_prompts=8"]
                 for name, ov in SAFE_VARIANTS.items()}
DEFAULT_SAFE = ["mean-step", "pll-step", "pll-phase-0.005", "pll-phase-0.02", "pll-phase-0.1", "pll-phase-1.0",
                "pll-phase-0.02-r5", "sub-phase-0.02", "trust-0.0002", "trust-0.002"]

STRENGTHS = {"kl": ["0.01", "0.05", "0.2"], "replay": ["0.125", "0.25", "0.5"], "ewc": ["10", "100", "1000"],
             "l2sp": ["0.1", "1", "10"], "safe": DEFAULT_SAFE, "safe+replay": ["pll-phase-0.02"],
             "softmin": ["0.05", "0.2"], "safe+softmin": ["0.05", "0.2"],
             "safe+ewc": ["10", "100"], "safe+l2sp": ["0.01", "0.03"]}


def variants(method: str, strengths: list[str] | None) -> list[tuple[str, list[str]]]:
    """(variant name, overrides) of one method."""
    vals = strengths if strengths is not None else STRENGTHS.get(method, [])
    if method == "plain":
        return [("plain", [])]
    if method == "kl":
        return [(f"kl-{v}", [f"rl.kl_coef={v}"]) for v in vals]
    if method in ("replay", "ewc", "l2sp"):
        key = {"replay": "replay_fraction", "ewc": "ewc_lambda", "l2sp": "l2sp_lambda"}[method]
        return [(f"{method}-{v}", [f"method.name={method}", f"method.{key}={v}"]) for v in vals]
    if method in ("safe+ewc", "safe+l2sp"):  # the default constraint beside a penalty baseline
        base = method.split("+")[1]
        key = {"ewc": "ewc_lambda", "l2sp": "l2sp_lambda"}[base]
        return [(f"{method}-{v}", ["safety.enabled=true", *SAFE_VARIANTS["pll-phase-0.02"], f"method.name={base}",
                                   f"method.{key}={v}"]) for v in vals]
    if method in ("softmin", "safe+softmin"):
        safe = ["safety.enabled=true", *SAFE_VARIANTS["pll-phase-0.02"]] if method == "safe+softmin" else []
        return [(f"{method}-{v}", [*safe, "protocol.skill_weighting=softmin", f"protocol.softmin_temperature={v}"])
                for v in vals]
    if method in ("safe", "safe+replay"):
        unknown = [v for v in vals if v not in SAFE_VARIANTS]
        if unknown:
            raise SystemExit(f"unknown safe variant(s) {unknown}; known: {', '.join(SAFE_VARIANTS)}")
        extra = ["method.name=replay", "method.replay_fraction=0.25"] if method == "safe+replay" else []
        tag = "safe" if method == "safe" else "safe+replay"
        return [(f"{tag}-{v}", ["safety.enabled=true", *SAFE_VARIANTS[v], *extra]) for v in vals]
    raise SystemExit(f"unknown method {method!r}; known: plain, {', '.join(STRENGTHS)}")


@dataclass
class Run:
    order: str
    world_seed: int
    method: str             # --methods entry the variant came from (plain, kl, ..., safe+replay)
    variant: str
    seed: int
    args: list[str]         # after `retainrl train`
    out: Path

    @property
    def done(self) -> bool:
        return (self.out / "summary.json").exists()

    @property
    def started(self) -> bool:
        return (self.out / "config.yaml").exists()


def plan(a) -> list[Run]:
    strengths = {}
    for spec in a.strength:
        name, _, vals = spec.partition("=")
        strengths[name] = [v for v in vals.split(",") if v]
    runs = []
    steps = next((int(o.split("=")[1]) for o in PROFILES[a.profile] if o.startswith("protocol.steps_per_phase=")), 20)
    for order in a.orders.split(","):
        if order not in ORDERS:
            raise SystemExit(f"unknown order {order!r}; known: {', '.join(ORDERS)}")
        # mixed: one phase of the three skills as long as the whole sequence (protect: all of them)
        mixed = [] if order != "mixed" else ["protocol.kind=mixed", f"protocol.steps_per_phase={3 * steps}"]
        only_mixed = sorted({"softmin", "safe+softmin"} & set(a.methods.split(",")))
        if only_mixed and order != "mixed":  # one skill per phase: the runs would repeat plain / safe
            raise SystemExit(f"--methods {','.join(only_mixed)} weigh the skills of a mixed phase; order {order!r} "
                             f"has one skill per phase (use --orders mixed)")
        for ws in [int(x) for x in a.world_seeds.split(",")]:
            for method in a.methods.split(","):
                for name, ov in variants(method, strengths.get(method)):
                    for s in [int(x) for x in a.seeds.split(",")]:
                        out = Path(a.root).resolve() / order / f"w{ws}" / name / f"s{s}"
                        extra = [f"model.name_or_path={a.model}"] if a.model else []
                        args = [CONFIG, *PROFILES[a.profile], f"protocol.phases={ORDERS[order]}", *mixed, *ov,
                                f"seed={s}", f"world.seed={ws}", *extra, *a.set, "sandbox_workers=1",
                                "--out", str(out)]
                        runs.append(Run(order, ws, method, name, s, args, out))
    return runs


def validate(runs: list[Run]) -> None:
    """Build every run's config before anything trains: a bad key or value stops the sweep at once."""
    sys.path.insert(0, str(ROOT))
    from retainrl.config import ConfigError, load_config
    from retainrl.train.config import RunConfig

    for r in runs:
        try:
            load_config(RunConfig, ROOT / CONFIG, r.args[1:r.args.index("--out")])
        except ConfigError as e:
            raise SystemExit(f"{r.variant}: config error: {e}") from None


def train(run: Run) -> tuple[bool, float]:
    run.out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with open(run.out / "train.log", "a") as log:
        rc = subprocess.call([sys.executable, "-m", "retainrl", "train", *run.args], cwd=ROOT, stdout=log,
                             stderr=subprocess.STDOUT)
    return rc == 0 and run.done, time.time() - t0


def run_all(runs: list[Run], parallel: int) -> None:
    todo = [r for r in runs if not r.done]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to train "
          f"({sum(r.started for r in todo)} resume from a checkpoint), {parallel} at a time", flush=True)
    took: list[float] = []
    t_start = time.time()

    def one(r: Run):
        ok, dt = train(r)
        return r, ok, dt

    failed = 0
    with ThreadPoolExecutor(parallel) as pool:
        for i, (r, ok, dt) in enumerate(pool.map(one, todo), 1):
            took.append(dt)
            failed += not ok
            left = len(todo) - i
            eta = (time.time() - t_start) / i * left
            brief = ""
            if ok:
                s = json.loads((r.out / "summary.json").read_text())
                num = lambda k, f: format(s[k], f) if isinstance(s.get(k), (int, float)) else "-"  # mixed: no forgetting
                brief = f"forgetting {num('forgetting', '.3f')} gain {num('target_gain_mean', '+.3f')} worst {num('worst', '.3f')}"
            print(f"[{i}/{len(todo)}] {time.strftime('%H:%M:%S')} {'done' if ok else 'FAILED'} {r.order}/w{r.world_seed}/"
                  f"{r.variant}/s{r.seed} in {dt:.0f}s {brief if ok else '(see ' + str(r.out / 'train.log') + ')'}; "
                  f"{left} left, ETA {eta / 60:.0f} min", flush=True)
    if took:
        print(f"median {st.median(took):.0f}s per run; {failed} failed", flush=True)
    if failed:
        sys.exit(1)


# ----------------------------------------------------------------------------------- summary
METRICS = (("forgetting", "forgetting"), ("target gain", "target_gain_mean"), ("gain, phases 2+", "target_gain_later"),
           ("worst", "worst"), ("avg", "avg"))


def later_gain(s: dict) -> float | None:
    """Mean gain of the trained skill over the phases after the first, the ones with a skill to protect
    (target_gain_mean averages in the first phase too, which no method changes); None for one phase."""
    g = s.get("target_gain")
    return st.mean(g[1:]) if isinstance(g, list) and len(g) > 1 else None


def ms(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{st.mean(values):.3f} ± {st.stdev(values):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def pareto(points: dict[str, tuple[float, float]]) -> set[str]:
    """Names not dominated on (forgetting low, gain high): no other point is at least as good on
    both and strictly better on one."""
    front = set()
    for n, (f, g) in points.items():
        if not any((f2 <= f and g2 >= g) and (f2 < f or g2 > g) for m, (f2, g2) in points.items() if m != n):
            front.add(n)
    return front


def table(title: str, by: dict[str, list[dict]]) -> list[str]:
    """Markdown lines for one group: variant -> summaries over seeds (and world seeds / orders)."""
    # the mixed protocol has no forgetting (one phase): such groups get no Pareto front and no bar
    means = {v: (st.mean(r["forgetting"] for r in rows), st.mean(r["target_gain_mean"] for r in rows))
             for v, rows in by.items() if rows and all(r.get("forgetting") is not None for r in rows)}
    front = pareto(means)
    base = means.get("plain")
    lines = [f"## {title}", "", "| variant | n | forgetting | target gain | gain, phases 2+ | worst | avg | "
             "forg. / plain | gain / plain | forg. - plain, paired | Pareto | issue bar |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    plain_by_pair = {r["_pair"]: r for r in by.get("plain", []) if "_pair" in r}
    for v, rows in by.items():
        if not rows:
            continue
        cells = [ms([r[k] for r in rows if r.get(k) is not None]) for _, k in METRICS]
        f, g = means.get(v, (None, None))
        rel_f = f"{f / base[0]:.2f}" if f is not None and base and base[0] > 0 else "-"
        rel_g = f"{g / base[1]:.2f}" if g is not None and base and base[1] > 0 else "-"
        bar = "-"
        if f is not None and v.startswith("safe") and base and base[0] > 0 and base[1] > 0:
            bar = "met" if f <= 0.5 * base[0] and g >= 0.8 * base[1] else "not met"
        # the same seed, order and world seed without the method: the seed's own noise cancels
        diffs = [r["forgetting"] - plain_by_pair[r["_pair"]]["forgetting"] for r in rows
                 if v != "plain" and r.get("_pair") in plain_by_pair and r.get("forgetting") is not None
                 and plain_by_pair[r["_pair"]].get("forgetting") is not None]
        paired = f"{ms(diffs)} ({len(diffs)})" if diffs else "-"
        lines.append(f"| {v} | {len(rows)} | " + " | ".join(cells) +
                     f" | {rel_f} | {rel_g} | {paired} | {'yes' if v in front else ''} | {bar} |")
    return lines + [""]


def summary(runs: list[Run], out: Path | None) -> None:
    groups: dict[str, dict[str, list[dict]]] = {}
    for r in runs:
        if not r.done:
            continue
        s = json.loads((r.out / "summary.json").read_text())
        s["target_gain_later"] = later_gain(s)
        s["_pair"] = (r.order, r.world_seed, r.seed)
        for g in (f"{r.order} / world seed {r.world_seed}", "pooled over orders and world seeds"):
            groups.setdefault(g, {}).setdefault(r.variant, []).append(s)
    n_done = sum(r.done for r in runs)
    lines = ["# Skill-safe v2 sweep", "", f"{n_done} of {len(runs)} planned runs finished. Mean ± sample sd over "
             "seeds; target gain = target_gain_mean; Pareto on the variant means (forgetting low, gain high); "
             "issue bar: forgetting <= 0.5 x plain and gain >= 0.8 x plain.", ""]
    pooled = groups.pop("pooled over orders and world seeds", None)
    for title, by in groups.items():
        lines += table(title, by)
    if pooled is not None and len(groups) > 1:
        lines += table("pooled over orders and world seeds", pooled)
    text = "\n".join(lines)
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}")


# ----------------------------------------------------------------------------------- diagnostics
DIAG = (("active frac", "safety/active_frac"), ("share in row span", "safety/protected_share"),
        ("step change rel", "safety/rel_change"))


def run_diag(out: Path) -> dict | None:
    """Means over a run's protected steps (train records with a safety/num_protected > 0): the layer's
    active fraction, the share of the step inside the span of the protected rows, the relative change
    of the step, and per protected skill the predicted vs realised change of J on the held-out memory
    prompts (summed over the steps: the phase's modelled vs measured drift there)."""
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    tr = [r for r in recs if r.get("kind") == "train" and r.get("safety/num_protected", 0) > 0]
    if not tr:
        return None
    d = {k: st.mean(r[k] for r in tr if k in r) if any(k in r for r in tr) else float("nan") for _, k in DIAG}
    pred = [v for r in tr for k, v in r.items() if k.startswith("safety/heldout_predicted_dJ/")]
    real = [v for r in tr for k, v in r.items() if k.startswith("safety/heldout_realised_dJ/")]
    d["heldout pred"], d["heldout real"] = (sum(pred), sum(real)) if pred else (float("nan"), float("nan"))
    d["pred~real corr"] = st.correlation(pred, real) if len(pred) > 2 and len(set(pred)) > 1 and len(set(real)) > 1 \
        else float("nan")
    return d


def diag(runs: list[Run]) -> None:
    by: dict[str, list[tuple[dict, float]]] = {}
    for r in runs:
        if r.done and r.variant.startswith("safe"):
            d = run_diag(r.out)
            if d is not None:
                f = json.loads((r.out / "summary.json").read_text())["forgetting"]
                by.setdefault(f"{r.order}/w{r.world_seed}/{r.variant}", []).append((d, f))
    cols = [c for c, _ in DIAG] + ["heldout pred", "heldout real", "pred~real corr"]
    print("| variant | n | " + " | ".join(cols) + " | forgetting |")
    print("|---|---|" + "---|" * (len(cols) + 1))
    allrows: list[tuple[dict, float]] = []
    for v, rows in by.items():
        allrows += rows
        cells = []
        for c in cols:
            vals = [d[DIAG[[x for x, _ in DIAG].index(c)][1]] if c in dict(DIAG) else d[c] for d, _ in rows]
            vals = [x for x in vals if x == x]
            cells.append(f"{st.mean(vals):+.4f}" if vals else "-")
        print(f"| {v} | {len(rows)} | " + " | ".join(cells) + f" | {st.mean(f for _, f in rows):.3f} |")
    print()
    print("correlation with forgetting over all these runs (n = %d):" % len(allrows))
    for c in cols:
        key = dict(DIAG).get(c, c)
        pairs = [(d[key], f) for d, f in allrows if d[key] == d[key]]
        if len(pairs) > 2 and len({x for x, _ in pairs}) > 1 and len({f for _, f in pairs}) > 1:
            print(f"  {c}: {st.correlation([x for x, _ in pairs], [f for _, f in pairs]):+.2f}")


# ----------------------------------------------------------------------------------- selection
# Cost rank of the safe variants for the tie-break (lower is cheaper): rows reused, or answers refreshed
# once per phase < rows every step < the trust region's extra rows < every memory prompt constrained.
COST = {"r5": 0, "rp": 0, "r2": 0.5, "b4": 0.5, "b28": 3, "trust": 2}


def select(runs: list[Run], keep: float = 0.8, tie: float = 0.005) -> dict[str, str]:
    """The rule fixed before the sweep (LOG, 2026-12-01 session 6), per method over its variants in
    `runs`: among the variants whose mean target gain is >= keep x plain's, the lowest mean forgetting;
    variants within `tie` of it go to the cheaper (COST), then the higher gain; if none keeps the gain,
    the highest gain. Returns method -> variant name."""
    rows: dict[str, list[dict]] = {}
    for r in runs:
        if r.done:
            rows.setdefault(r.variant, []).append(json.loads((r.out / "summary.json").read_text()))
    planned = {r.variant: sum(x.variant == r.variant for x in runs) for r in runs}
    unfinished = sorted(v for v in planned if len(rows.get(v, [])) < planned[v])
    if unfinished:
        print(f"select: left out (not every run finished): {', '.join(unfinished)}")
    rows = {v: xs for v, xs in rows.items() if len(xs) == planned[v]}
    if "plain" not in rows:
        raise SystemExit("select: no finished plain runs in this selection")
    mean = {v: (st.mean(x["forgetting"] for x in xs), st.mean(x["target_gain_mean"] for x in xs)) for v, xs in rows.items()}
    bar = keep * mean["plain"][1]
    method_of = {r.variant: r.method for r in runs}
    out = {}
    for method in sorted({method_of[v] for v in mean} - {"plain"}):
        cands = [v for v in mean if method_of[v] == method]
        kept = [v for v in cands if mean[v][1] >= bar]
        if not kept:
            out[method] = max(cands, key=lambda v: mean[v][1])
            continue
        best = min(mean[v][0] for v in kept)
        near = [v for v in kept if mean[v][0] <= best + tie]
        cost = lambda v: next((c for k, c in COST.items() if k in v), 1)
        out[method] = min(near, key=lambda v: (cost(v), -mean[v][1]))
    for m, v in out.items():
        f, g = mean[v]
        print(f"{m:12s} {v:28s} forgetting {f:.3f} gain {g:.3f} ({g / mean['plain'][1]:.2f} x plain)")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("command", choices=("run", "status", "summary", "diag", "select"))
    p.add_argument("--methods", default="plain,kl,replay,ewc,l2sp,safe,safe+replay")
    p.add_argument("--strength", action="append", default=[], metavar="METHOD=v1,v2",
                   help="replace a method's strengths (safe / safe+replay: SAFE_VARIANTS names)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--orders", default="grr,rrg", help=f"comma-separated: {', '.join(f'{k} {v}' for k, v in ORDERS.items())}")
    p.add_argument("--world_seeds", default="0")
    p.add_argument("--profile", choices=sorted(PROFILES), default="small")
    p.add_argument("--model", default="", help="model.name_or_path (default: the config's bundled model)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    p.add_argument("--root", default="runs/ssv2")
    p.add_argument("--parallel", type=int, default=1, help="runs at a time (each: 1 torch thread, 1 sandbox worker)")
    p.add_argument("--dry", action="store_true", help="run: list the commands, train nothing")
    p.add_argument("--out", default="", help="summary: also write the markdown here")
    a = p.parse_args()
    runs = plan(a)
    if a.command == "run":
        validate(runs)
    if a.command == "run" and a.dry:
        for r in runs:
            print(("done  " if r.done else "todo  ") + "retainrl train " + " ".join(r.args))
        return
    if a.command == "run":
        run_all(runs, a.parallel)
    elif a.command == "status":
        by: dict[str, list[int]] = {}
        for r in runs:
            c = by.setdefault(r.variant, [0, 0, 0])
            c[0 if r.done else 1 if r.started else 2] += 1
        print(f"{'variant':28s} done partial todo")
        for v, (d, pa, t) in by.items():
            print(f"{v:28s} {d:4d} {pa:7d} {t:4d}")
        print(f"total {sum(r.done for r in runs)}/{len(runs)} done")
    elif a.command == "diag":
        diag(runs)
    elif a.command == "select":
        select(runs)
    else:
        summary(runs, Path(a.out) if a.out else None)


if __name__ == "__main__":
    main()
