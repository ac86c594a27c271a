"""Step time of a skill-safe GRPO step (2 protected skills) against the plain step on the same batch,
side by side in one run, on the bundled tiny model: per update, and all in (with the memory refreshes
and the diagnostics amortised over the steps they serve).

    python benchmarks/projection_overhead.py [--rounds 5] [--quick] [--fills 4] [--rows_every 5]

Each round times, in alternation, one update (objective.update: log-probs, losses, backward,
clip, and either opt.step() or the safety layer's step) on one fixed rollout batch (8 prompts x
8 samples, completions of the bundled model), and once the rest of a step (a fresh rollout of the
same 8 prompts x 8 and its verification: identical work for every variant). The memories have
SafetyConfig's default sizes (32 prompts, 4 held out, 4 samples, 8 prompts per step) and are filled
`--fills` times before timing (a prompt keeps its answers when a refresh has no passing sample, so
after a few refreshes most prompts have answers, as in training; with one fill of the base policy only
a third of them do, and the rows cost a third of what they cost in a run). Variants:

  plain        opt.step()
  safe-2       skill_mean (the seed's A-GEM-like row), rows every step
  pll-2        prompt_ll, budget phase (SafetyConfig's default), on a step without diagnostics:
               per-prompt gradients of 8 memory prompts per skill, both skills in one batched pass
  pll-2+diag   the same on a diagnostic step (every diagnostics_every = 5 steps by default): + the held-out
               prompts' gradients and the realised-change forward after the step
  pll-2/k      the default with rows_every = k (k = 2 and --rows_every, default 5): (t_computed + (k-1)
               t_reused) / k, t_reused measured on its own update each round
  pll-2 b4     the default with batch_prompts = 4 (4 constraint prompts per skill per step, not 8)
  pll-2 act    pll-2 with act_subspace=both (the default in the trainer since session 8): the proposed step
               projected out of the protected activation subspaces first; the subspaces' build (one
               forward + backward over each protected memory, once per phase) is timed apart and
               amortised over a phase (--phase_steps)
  act b4       pll-2 act with batch_prompts = 4, the trainer's default since session 10 ("default" below,
               diagnostics amortised; "default 8" the one of sessions 8-10); act/k pll-2 act with rows_every =
               --rows_every, amortised as pll-2/k
(pll-2 and the variants above keep batch_prompts = 8, SafetyConfig's value before session 10.)

The default's update is amortised as t_act + (t_diag - t_pll) / d, d = diagnostics_every ("rows only",
the default before session 8: (t_diag + (d-1) t_pll) / d; the other prompt_ll variants get the same
diagnostics' share added). Memory
refreshes (generation + verification of every memory prompt x 4 samples, and the phase budget's
anchor forward on the new answers) are timed per refresh of both skills and amortised over
refresh_every = 10 steps (SafetyConfig's default) and, for refresh_every = 0 (answers kept for the
phase), over a phase of 20 steps (configs/seq_v3.yaml). Reported: median and fastest-round times,
ratios to plain per update, per full step (rollout + verify + update) and all in, and CPU seconds of
this process. Goal (issue 12, section 3): <= 1.15x a plain step with 2 protected skills.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import time
from pathlib import Path

import torch

from retainrl.config import load_config
from retainrl.policy.rollout import generate
from retainrl.safety import estimates
from retainrl.safety import layer as safety_layer
from retainrl.seeds import derive_seed
from retainrl.train import objective
from retainrl.train.config import RunConfig
from retainrl.train.trainer import Trainer
from retainrl.verify import Sandbox
from retainrl.verify.checks import verify_many

ROOT = Path(__file__).resolve().parents[1]
SKILLS = ["gen", "repair"]      # training reason: gen and repair protected


def build(safe: bool, out: Path) -> Trainer:
    overrides = ["protocol.kind=sequential", "protocol.steps_per_phase=1", "world.n_heldout=4",
                 "safety.refresh_every=1000000", "tensorboard=false", "model.threads=2"]   # refreshes: by hand
    extra = ["safety.enabled=true", "protocol.phases=[gen,repair,reason]"] if safe else ["protocol.phases=[gen]"]
    return Trainer(load_config(RunConfig, ROOT / "configs" / "gain_gen.yaml", overrides + extra), out)


def fill(layer, policy, sb, fills: int) -> dict:
    """Refresh each protected skill's memory `fills` times (seeds of steps 0, 10, ...); the memory's
    size after it, per skill."""
    sizes = {}
    for s in SKILLS:
        mem, salt, _ = layer._constraint_memory(s)
        for i in range(fills):
            mem.refresh(policy, sb, layer.sampling, seed=derive_seed(layer.seed, 10 * i, f"{salt}/{s}"), step=0)
        if isinstance(mem, estimates.AnswerMemory):
            have = [a for a in mem.answers if a is not None]
            _, owner, w = estimates.distinct_rows(have) if have else (None, torch.zeros(0), torch.zeros(0))
            sizes[s] = {"prompts": len(mem.answers), "answered": len(have), "answers": int(w.sum()),
                        "distinct": int(owner.numel())}
    return sizes


def time_refresh(layer, policy, sb, params, sharing=()) -> float:
    """Seconds of one refresh of both skills' memories, with the phase budget's anchor forward.

    The refresh keeps refreshed_at (so the reused-rows variants keep their stored rows and are timed
    reusing them); the anchor values cached for the old answers are recomputed in every layer sharing
    the memories (`sharing`, untimed: the anchor forward of one layer is in the refresh's time), as a
    new refreshed_at would in training."""
    t0 = time.perf_counter()
    for s in SKILLS:
        mem, salt, _ = layer._constraint_memory(s)
        mem.refresh(policy, sb, layer.sampling, seed=derive_seed(layer.seed, 1000, f"{salt}/{s}"), step=0)
        if isinstance(mem, estimates.AnswerMemory):
            for other in (layer, *sharing):
                other.anchor_J.pop(s, None)
            safety_layer._anchor_values(layer, policy, params, s, mem.next_prompts(layer.cfg.batch_prompts))
    took = time.perf_counter() - t0
    for other in sharing:   # their anchor values on the new answers too, untimed (counted once, above)
        for s in SKILLS:
            if other.anchor is not None:
                safety_layer._anchor_values(other, policy, params, s, [])
    return took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--fills", type=int, default=4, help="memory refreshes before timing")
    ap.add_argument("--rows_every", type=int, default=5, help="k of the second reused-rows variant (the first: 2)")
    ap.add_argument("--phase_steps", type=int, default=20, help="steps of a phase, for refresh_every = 0")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "projection_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    k = args.rows_every
    tmp = Path("/tmp/retainrl_projection_bench")
    plain, safe = build(False, tmp / "plain"), build(True, tmp / "safe")
    base = dataclasses.replace(safe.cfg.safety, batch_prompts=8)   # the variants below as measured since session 7
    d = base.diagnostics_every
    params = safe.policy.trainable_parameters()
    with Sandbox(workers=2) as sb:
        for t in (plain, safe):
            t.sandbox = sb
        tasks = [plain.train_tasks["gen"][i] for i in range(8)]
        rollout = generate(plain.policy, [x.prompt for x in tasks], n=8, cfg=plain.cfg.sampling, seed=0)
        verdicts = verify_many(sb, [(tasks[i], s) for i, s in zip(rollout.task_index, rollout.texts)])
        rollout.rewards = torch.tensor([v.reward() for v in verdicts])

        def new_layer(**kw):
            return safety_layer.SafetyLayer(dataclasses.replace(base, **kw), safe.train_tasks, safe.cfg.sampling,
                                            safe.cfg.seed)
        mean_layer = new_layer(constraint="skill_mean", budget="step", eps_mode="relative", eps=0.0)
        pll, b4 = new_layer(act_subspace="off"), new_layer(act_subspace="off", batch_prompts=4)
        act = new_layer(act_subspace="both")
        act_b4, act_k = new_layer(act_subspace="both", batch_prompts=4), new_layer(act_subspace="both", rows_every=k)
        reuse = {j: new_layer(act_subspace="off", rows_every=j) for j in (2, k)}
        sizes = {"skill_mean": fill(mean_layer, safe.policy, sb, 1), "prompt_ll": fill(pll, safe.policy, sb, args.fills)}
        for other in (b4, act, act_b4, act_k, *reuse.values()):
            other.answer_memories = pll.answer_memories
        refresh_s = {"skill_mean": [], "prompt_ll": []}
        # name -> (layer, step number: 1 is not a diagnostic step, 0 is)
        variants = {"safe-2": (mean_layer, 1), "pll-2": (pll, 1), "pll-2+diag": (pll, 0), "pll-2 b4": (b4, 1),
                    "pll-2 act": (act, 1), **{f"pll-2/{j}": (layer, 1) for j, layer in reuse.items()},
                    "act b4": (act_b4, 1), f"act/{k}": (act_k, 1)}
        build_s = []

        def update(name: str) -> float:
            t = plain if name == "plain" else safe
            apply = objective.plain_step
            if name != "plain":
                layer, step = variants[name]

                def apply(params, opt):
                    return layer.step(params, opt, safe.policy, sb, step, SKILLS)
            t0, c0 = time.perf_counter(), time.process_time()
            objective.update(t.cfg.rl, t.policy, t.opt, rollout, max_len=t.cfg.sampling.max_new_tokens,
                             penalty=t.method.penalty, apply=apply)
            cpu[name].append(time.process_time() - c0)
            return time.perf_counter() - t0

        names = ["plain"] + list(variants)
        times = {n: [] for n in names}
        cpu = {n: [] for n in names}      # this process's CPU seconds (all its threads) per update
        rest_s, rest_cpu = [], []         # rest_cpu: the generation's CPU (verification runs in the sandbox workers)
        for n in variants:                # one untimed step each: anchors set, stored rows exist
            update(n)
            cpu[n].pop()
        for r in range(1 if args.quick else args.rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            fresh = generate(plain.policy, [x.prompt for x in tasks], n=8, cfg=plain.cfg.sampling, seed=100 + r)
            verify_many(sb, [(tasks[i], s) for i, s in zip(fresh.task_index, fresh.texts)])
            rest_s.append(time.perf_counter() - t0)
            rest_cpu.append(time.process_time() - c0)
            print(f"round {r + 1}: rollout + verify {rest_s[-1]:.3f} s", flush=True)
            for name in names:
                dt = update(name)
                times[name].append(dt)
                print(f"round {r + 1}: {name:10s} update {dt:.3f} s", flush=True)
            act.act = act.act_bases = None                   # the subspaces' build at a phase start
            t0 = time.perf_counter()
            act._act_projection(safe.policy, params, SKILLS)
            build_s.append(time.perf_counter() - t0)
            print(f"round {r + 1}: subspaces of 2 skills built in {build_s[-1]:.2f} s", flush=True)
            refresh_s["skill_mean"].append(time_refresh(mean_layer, safe.policy, sb, params))
            refresh_s["prompt_ll"].append(time_refresh(pll, safe.policy, sb, params,
                                                       (b4, act, act_b4, act_k, *reuse.values())))
            print(f"round {r + 1}: refresh of 2 memories: " + ", ".join(f"{c} {v[-1]:.2f} s" for c, v in refresh_s.items()),
                  flush=True)

    def amortise(v: dict) -> dict:
        out = dict(v)
        for j in (2, k):   # one computed in j (not a diagnostic step), the diagnostics' extra as the default's
            out[f"pll-2/{j}"] = (v["pll-2"] + (j - 1) * v[f"pll-2/{j}"]) / j + (v["pll-2+diag"] - v["pll-2"]) / d
        out["pll-2 b4"] = v["pll-2 b4"] + (v["pll-2+diag"] - v["pll-2"]) / d
        out["rows only"] = (v["pll-2+diag"] + (d - 1) * v["pll-2"]) / d     # diagnostics every d steps
        # the default since session 10: rows of 4 prompts per skill + the subspaces (sessions 8-10: 8 prompts)
        out["default"] = v["act b4"] + (v["pll-2+diag"] - v["pll-2"]) / d
        out["default 8"] = v["pll-2 act"] + (v["pll-2+diag"] - v["pll-2"]) / d
        out[f"default 8 /{k}"] = (v["pll-2 act"] + (k - 1) * v[f"act/{k}"]) / k + (v["pll-2+diag"] - v["pll-2"]) / d
        return out
    med = amortise({n: statistics.median(v) for n, v in times.items()})
    low = amortise({n: min(v) for n, v in times.items()})
    cmed = amortise({n: statistics.median(v) for n, v in cpu.items()})
    rest, rest_low, rest_c = statistics.median(rest_s), min(rest_s), statistics.median(rest_cpu)
    ref = {c: statistics.median(v) for c, v in refresh_s.items()}
    full = {n: (rest + med[n]) / (rest + med["plain"]) for n in med}
    # all in: the memory refresh amortised (skill_mean and the default: every 10 steps; refresh_every=0: per phase)
    per_step_refresh = {"safe-2": ref["skill_mean"] / 10, "default": ref["prompt_ll"] / 10}
    build_t = statistics.median(build_s)
    all_in = {"safe-2 (refresh 10)": (rest + med["safe-2"] + per_step_refresh["safe-2"]) / (rest + med["plain"]),
              f"default (refresh 10, subspaces built per {args.phase_steps}-step phase)":
                  (rest + med["default"] + per_step_refresh["default"] + build_t / args.phase_steps) / (rest + med["plain"]),
              "rows only (refresh 10)": (rest + med["rows only"] + per_step_refresh["default"]) / (rest + med["plain"]),
              f"default, refresh_every=0 ({args.phase_steps}-step phase)":
                  (rest + med["default"] + ref["prompt_ll"] / args.phase_steps) / (rest + med["plain"]),
              **{f"rows_every={j} (refresh 10)": (rest + med[f"pll-2/{j}"] + ref["prompt_ll"] / 10) / (rest + med["plain"])
                 for j in (2, k)},
              "batch_prompts=4 (refresh 10)": (rest + med["pll-2 b4"] + ref["prompt_ll"] / 10) / (rest + med["plain"])}
    result = {"update_s_median": med, "ratio_to_plain": {n: med[n] / med["plain"] for n in med},
              "rollout_verify_s_median": rest, "full_step_ratio_to_plain": full,
              "all_in_ratio_to_plain": all_in, "memory_refresh_s_two_skills": ref,
              "subspace_build_s_two_skills": build_t, "build_rounds": build_s,
              # the fastest round of each: the least disturbed by other processes on a shared machine
              "update_s_min": low, "rollout_verify_s_min": rest_low,
              "full_step_ratio_to_plain_min": {n: (rest_low + low[n]) / (rest_low + low["plain"]) for n in low},
              # CPU seconds of this process: less sensitive to other processes' load than wall time
              "update_cpu_s_median": cmed, "rollout_cpu_s_median": rest_c,
              "full_step_cpu_ratio_to_plain": {n: (rest_c + cmed[n]) / (rest_c + cmed["plain"]) for n in cmed},
              "rounds": times, "rounds_cpu": cpu, "refresh_rounds": refresh_s, "rows_every": k,
              "diagnostics_every": d, "memory_sizes_after_fill": sizes, "fills": args.fills,
              "batch": "8 prompts x 8 samples, bundled tiny model, 2 torch threads",
              "memory": f"SafetyConfig defaults: {base.memory_prompts} prompts ({base.heldout_prompts} held out), "
                        f"{base.memory_samples} samples, {base.batch_prompts} prompts per step"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nmemory after {args.fills} fills: {json.dumps(sizes['prompt_ll'])}")
    print(f"rollout + verify (every variant): {rest:.3f} s (fastest round {rest_low:.3f} s)")
    print(f"{'variant':12s} {'update s':>9s} {'x plain':>8s} {'full step':>10s} {'| min: update s':>15s} {'full step':>10s}"
          f" {'| CPU full step':>15s}")
    for n in med:
        print(f"{n:12s} {med[n]:9.3f} {med[n] / med['plain']:8.2f} {full[n]:10.2f} {low[n]:15.3f} "
              f"{result['full_step_ratio_to_plain_min'][n]:10.2f} {result['full_step_cpu_ratio_to_plain'][n]:15.2f}")
    print("refresh of 2 memories (median): " + ", ".join(f"{c} {s:.2f} s" for c, s in ref.items()))
    print("all in, x plain step: " + ", ".join(f"{n} {v:.2f}" for n, v in all_in.items()))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
