"""Step time of a skill-safe GRPO step (2 protected skills; optionally 4) against the plain step on the
same batch, side by side in one run, on the bundled tiny model, for the seed's constraint
(skill_mean) and for the default (prompt_ll, phase budget), each with rows recomputed every step and with rows reused
(safety.rows_every = k, amortised).

    python benchmarks/projection_overhead.py [--rounds 3] [--quick] [--rows_every 5] [--four]

Each round times, in alternation, one update (objective.update: log-probs, losses, backward,
clip, and either opt.step() or the safety layer's step) on one fixed rollout batch (8 prompts x
8 samples, completions of the bundled model), after the memories were filled once (memory
refreshes are amortised over `refresh_every` steps and timed separately). Variants:

  plain          opt.step()
  safe-2         skill_mean (the seed's A-GEM-like row), rows every step: 2 extra forward + backward passes
                 over 8 memory prompts x 4 samples each
  safe-2/k       the same with rows_every = k: one update with the rows computed (= safe-2's
                 time) and k - 1 with them reused; timed as (t_computed + (k-1) t_reused) / k,
                 t_reused measured on its own update each round
  pll-2, pll-2/k prompt_ll, budget phase (SafetyConfig's default): per-prompt gradients of 8 + 4 held-out memory prompts
                 x <= 4 verified answers per skill, one batched forward + backward per skill
  safe-4         (--four) each memory used twice: 4 extra passes, a 4-row projection

Reported: median (and fastest-round) update seconds per variant, the ratio to plain, the same in CPU
seconds of this process (process_time: on a machine shared with other jobs it moves less than wall
time; the rollout's verification runs in sandbox workers and is not in it), and the time inside
`project_with_info` as a fraction of the step. Each round also times the rest of a full step
once (a fresh rollout of the same 8 prompts x 8 and its verification, identical work for every
variant), so the full-step ratio is (rollout + verify + safe update) / (rollout + verify + plain
update). Goal (issue 12, section 3): <= 1.15x with 2 protected skills; the projection itself < 1%.
measure_realised is off (the realised-change diagnostic is one more forward per skill per step).
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
from retainrl.safety import layer as safety_layer
from retainrl.train import objective
from retainrl.train.config import RunConfig
from retainrl.train.trainer import Trainer
from retainrl.verify import Sandbox
from retainrl.verify.checks import verify_many

ROOT = Path(__file__).resolve().parents[1]


def build(safe: bool, out: Path) -> Trainer:
    overrides = ["protocol.kind=sequential", "protocol.steps_per_phase=1", "world.n_train=64", "world.n_heldout=4",
                 "safety.memory_prompts=8", "safety.memory_samples=4", "safety.batch_prompts=8",
                 "safety.refresh_every=1000000", "safety.measure_realised=false", "tensorboard=false", "model.threads=2"]
    extra = ["safety.enabled=true", "protocol.phases=[gen,repair,reason]"] if safe else ["protocol.phases=[gen]"]
    return Trainer(load_config(RunConfig, ROOT / "configs" / "gain_gen.yaml", overrides + extra), out)


def layers(safe: Trainer, sb, k: int, four: bool) -> tuple[dict, dict]:
    """name -> (SafetyLayer, protected skills); the memories filled once and shared by the layers of
    one constraint. Returns (variants, memory refresh seconds per constraint)."""
    base, skills, refresh = safe.cfg.safety, ["gen", "repair"], {}   # training reason: gen, repair protected
    out = {}
    # safe: the seed's constraint (skill_mean, per-step relative slack); pll: SafetyConfig's default
    # (prompt_ll with the phase budget)
    for tag, constraint, kw in (("safe", "skill_mean", dict(budget="step", eps_mode="relative", eps=0.0)),
                                ("pll", "prompt_ll", {})):
        every = safety_layer.SafetyLayer(dataclasses.replace(base, constraint=constraint, **kw), safe.train_tasks,
                                         safe.cfg.sampling, safe.cfg.seed)
        reuse = safety_layer.SafetyLayer(dataclasses.replace(base, constraint=constraint, rows_every=k, **kw),
                                         safe.train_tasks, safe.cfg.sampling, safe.cfg.seed)
        t0 = time.perf_counter()
        for s in skills:
            every.refresh_if_due(safe.policy, sb, 0, s)
        refresh[constraint] = time.perf_counter() - t0
        reuse.memories, reuse.answer_memories = every.memories, every.answer_memories
        out[f"{tag}-2"] = (every, skills)
        out[f"{tag}-2/{k}"] = (reuse, skills)
    if four:
        out["safe-4"] = (out["safe-2"][0], skills * 2)
    return out, refresh


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows_every", type=int, default=5, help="k of the reused-rows variants")
    ap.add_argument("--four", action="store_true", help="also time 4 protected skills (each memory twice)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "projection_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    k = args.rows_every
    tmp = Path("/tmp/retainrl_projection_bench")
    plain = build(False, tmp / "plain")
    safe = build(True, tmp / "safe")
    with Sandbox(workers=2) as sb:
        for t in (plain, safe):
            t.sandbox = sb
        tasks = [plain.train_tasks["gen"][i] for i in range(8)]
        rollout = generate(plain.policy, [x.prompt for x in tasks], n=8, cfg=plain.cfg.sampling, seed=0)
        verdicts = verify_many(sb, [(tasks[i], s) for i, s in zip(rollout.task_index, rollout.texts)])
        rollout.rewards = torch.tensor([v.reward() for v in verdicts])
        variants, refresh_s = layers(safe, sb, k, args.four)   # memory refreshes, timed separately
        proj_time = [0.0]
        orig = safety_layer.project_with_info

        def timed(*a, **kw):
            t = time.perf_counter()
            r = orig(*a, **kw)
            proj_time[0] += time.perf_counter() - t
            return r
        safety_layer.project_with_info = timed

        def update(name: str) -> float:
            t = plain if name == "plain" else safe
            apply = objective.plain_step
            if name != "plain":
                layer, skills = variants[name]

                def apply(params, opt):
                    return layer.step(params, opt, safe.policy, sb, safe.global_step, skills)
            proj_time[0] = 0.0
            t0, c0 = time.perf_counter(), time.process_time()
            objective.update(t.cfg.rl, t.policy, t.opt, rollout, max_len=t.cfg.sampling.max_new_tokens,
                             penalty=t.method.penalty, apply=apply)
            cpu[name].append(time.process_time() - c0)
            return time.perf_counter() - t0

        names = ["plain"] + list(variants)
        times = {n: [] for n in names}
        cpu = {n: [] for n in names}      # this process's CPU seconds (all its threads) per update
        proj_frac = {n: [] for n in names if n != "plain"}
        rest_s, rest_cpu = [], []   # rest_cpu: the generation's CPU (verification runs in the sandbox workers)
        for r in range(1 if args.quick else args.rounds):
            t0, c0 = time.perf_counter(), time.process_time()
            fresh = generate(plain.policy, [x.prompt for x in tasks], n=8, cfg=plain.cfg.sampling, seed=100 + r)
            verify_many(sb, [(tasks[i], s) for i, s in zip(fresh.task_index, fresh.texts)])
            rest_s.append(time.perf_counter() - t0)
            rest_cpu.append(time.process_time() - c0)
            print(f"round {r + 1}: rollout + verify {rest_s[-1]:.3f} s", flush=True)
            for name in names:
                if "/" in name:   # reused rows: make sure a stored row exists (computed last round or now, untimed)
                    layer = variants[name][0]
                    if not layer.row_cache:
                        update(name)
                        cpu[name].pop()
                dt = update(name)
                times[name].append(dt)
                if name != "plain":
                    proj_frac[name].append(proj_time[0] / dt)
                print(f"round {r + 1}: {name:9s} update {dt:.3f} s", flush=True)
    def amortise(v: dict) -> dict:   # x/k: one computed (the every-step variant's time) + k - 1 reused
        return {n: (v[n.split("/")[0]] + (k - 1) * v[n]) / k if "/" in n else v[n] for n in v}
    med = amortise({n: statistics.median(v) for n, v in times.items()})
    low = amortise({n: min(v) for n, v in times.items()})
    rest, rest_low = statistics.median(rest_s), min(rest_s)
    cmed, rest_c = amortise({n: statistics.median(v) for n, v in cpu.items()}), statistics.median(rest_cpu)
    result = {"update_s_median": med, "ratio_to_plain": {n: med[n] / med["plain"] for n in med},
              "rollout_verify_s_median": rest,
              "full_step_ratio_to_plain": {n: (rest + med[n]) / (rest + med["plain"]) for n in med},
              # the fastest round of each: the least disturbed by other processes on a shared machine
              "update_s_min": low, "rollout_verify_s_min": rest_low,
              # CPU seconds of this process: less sensitive to other processes' load than wall time
              "update_cpu_s_median": cmed, "rollout_cpu_s_median": rest_c,
              "full_step_cpu_ratio_to_plain": {n: (rest_c + cmed[n]) / (rest_c + cmed["plain"]) for n in cmed},
              "rounds_cpu": cpu,
              "full_step_ratio_to_plain_min": {n: (rest_low + low[n]) / (rest_low + low["plain"]) for n in low},
              "projection_fraction_median": {n: statistics.median(v) for n, v in proj_frac.items()},
              "memory_refresh_s_two_skills": refresh_s, "rows_every": k, "rounds": times,
              "note": "x/k variants: update_s_median amortised (safe-2 + (k-1) reused) / k; rounds: reused updates",
              "batch": "8 prompts x 8 samples, bundled tiny model, 2 torch threads",
              "memory": "8 prompts x 4 samples per protected skill (prompt_ll: + 4 held-out prompts)"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nrollout + verify (every variant): {rest:.3f} s")
    print(f"(min over rounds: rollout + verify {rest_low:.3f} s)")
    print(f"{'variant':10s} {'update s':>9s} {'x plain':>8s} {'full step x plain':>18s} {'projection share':>17s}"
          f" {'| min: update s':>15s} {'x plain':>8s} {'full step':>10s}")
    for n in med:
        share = result["projection_fraction_median"].get(n)
        print(f"{n:10s} {med[n]:9.3f} {med[n] / med['plain']:8.2f} {result['full_step_ratio_to_plain'][n]:18.2f} "
              f"{('%.2f%%' % (100 * share)) if share else '-':>17s} {low[n]:15.3f} {low[n] / low['plain']:8.2f} "
              f"{result['full_step_ratio_to_plain_min'][n]:10.2f}")
    print("memory refresh (2 skills, amortised over refresh_every steps): "
          + ", ".join(f"{c} {s:.2f} s" for c, s in refresh_s.items()))
    print(f"CPU seconds of this process (median; rollout {rest_c:.3f} s): " + ", ".join(
        f"{n} {cmed[n]:.3f} ({cmed[n] / cmed['plain']:.2f}x, full step {result['full_step_cpu_ratio_to_plain'][n]:.2f}x)"
        for n in cmed))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
