"""Step time of a skill-safe GRPO step (2 and 4 protected skills, memory-based, 32 samples each)
against the plain step on the same batch, side by side in one run, on the bundled tiny model.

    python benchmarks/projection_overhead.py [--rounds 3] [--quick]

Each round times, in alternation, one update (objective.update: log-probs, losses, backward,
clip, and either opt.step() or the safety layer's step) on one fixed rollout batch (8 prompts x
8 samples, completions of the bundled model), after the memories were filled once (memory
refreshes are amortised over `refresh_every` steps and timed separately). Reported: median
update seconds per variant, the ratio to plain, and the time inside `project_with_info`
itself as a fraction of the step. Each round also times the rest of a full step once (a fresh
rollout of the same 8 prompts x 8 and its verification, identical work for every variant), so
the full-step ratio is (rollout + verify + safe update) / (rollout + verify + plain update). Goal (issue 5): <= 1.15x with 2 protected skills; the
projection itself < 1% of the step.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "projection_overhead.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    tmp = Path("/tmp/retainrl_projection_bench")
    plain = build(False, tmp / "plain")
    # The world has 3 skills, so at most 2 are protected while one trains; the 4-skill variant
    # uses each memory twice (4 extra backward passes and a 4-row projection, the same cost).
    safe = build(True, tmp / "safe")
    with Sandbox(workers=2) as sb:
        for t in (plain, safe):
            t.sandbox = sb
        tasks = [plain.train_tasks["gen"][i] for i in range(8)]
        rollout = generate(plain.policy, [x.prompt for x in tasks], n=8, cfg=plain.cfg.sampling, seed=0)
        verdicts = verify_many(sb, [(tasks[i], s) for i, s in zip(rollout.task_index, rollout.texts)])
        rollout.rewards = torch.tensor([v.reward() for v in verdicts])
        # fill the memories once (timed separately: refreshes are amortised over refresh_every)
        t0 = time.perf_counter()
        for s in ("gen", "repair"):  # training reason: gen and repair are protected
            safe.safety.memory(s).refresh(safe.policy, sb, safe.cfg.sampling, seed=1, step=0)
        refresh_s = time.perf_counter() - t0
        proj_time = [0.0]
        orig = safety_layer.project_with_info

        def timed(*a, **k):
            t = time.perf_counter()
            r = orig(*a, **k)
            proj_time[0] += time.perf_counter() - t
            return r
        safety_layer.project_with_info = timed
        times = {"plain": [], "safe-2": [], "safe-4": []}
        proj_frac = {"safe-2": [], "safe-4": []}
        rest_s = []
        for r in range(1 if args.quick else args.rounds):
            t0 = time.perf_counter()
            fresh = generate(plain.policy, [x.prompt for x in tasks], n=8, cfg=plain.cfg.sampling, seed=100 + r)
            verify_many(sb, [(tasks[i], s) for i, s in zip(fresh.task_index, fresh.texts)])
            rest_s.append(time.perf_counter() - t0)
            print(f"round {r + 1}: rollout + verify {rest_s[-1]:.3f} s", flush=True)
            for name in times:
                t = plain if name == "plain" else safe
                apply = objective.plain_step
                if name != "plain":
                    skills = ["gen", "repair"] * (2 if name == "safe-4" else 1)

                    def apply(params, opt, skills=skills):
                        return safe.safety.step(params, opt, safe.policy, sb, safe.global_step, skills)
                proj_time[0] = 0.0
                t0 = time.perf_counter()
                objective.update(t.cfg.rl, t.policy, t.opt, rollout, max_len=t.cfg.sampling.max_new_tokens,
                                 penalty=t.method.penalty, apply=apply)
                dt = time.perf_counter() - t0
                times[name].append(dt)
                if name != "plain":
                    proj_frac[name].append(proj_time[0] / dt)
                print(f"round {r + 1}: {name:7s} update {dt:.3f} s", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    rest = statistics.median(rest_s)
    result = {"update_s_median": med, "ratio_to_plain": {k: med[k] / med["plain"] for k in med},
              "rollout_verify_s_median": rest,
              "full_step_ratio_to_plain": {k: (rest + med[k]) / (rest + med["plain"]) for k in med},
              "projection_fraction_median": {k: statistics.median(v) for k, v in proj_frac.items()},
              "memory_refresh_s_two_skills": refresh_s, "rounds": times,
              "batch": "8 prompts x 8 samples, bundled tiny model, 2 torch threads",
              "memory": "8 prompts x 4 samples = 32 samples per protected skill"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"\nrollout + verify (every variant): {rest:.3f} s")
    print(f"{'variant':8s} {'update s':>9s} {'x plain':>8s} {'full step x plain':>18s} {'projection share':>17s}")
    for k in med:
        share = result["projection_fraction_median"].get(k)
        print(f"{k:8s} {med[k]:9.3f} {med[k] / med['plain']:8.2f} {result['full_step_ratio_to_plain'][k]:18.2f} "
              f"{('%.2f%%' % (100 * share)) if share else '-':>17s}")
    print(f"memory refresh (2 skills x 32 samples, amortised over refresh_every steps): {refresh_s:.2f} s")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
