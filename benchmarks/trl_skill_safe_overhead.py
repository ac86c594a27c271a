#!/usr/bin/env python
"""Overhead of the skill-safe callback in TRL: a GRPOTrainer step with attach_skill_safety and 2
protected skills vs a plain GRPOTrainer step, side by side on the bundled model (CPU).

    .venv/bin/python benchmarks/trl_skill_safe_overhead.py                 # 2 rounds x (1 warm-up + 10 timed) per side
    .venv/bin/python benchmarks/trl_skill_safe_overhead.py --steps 5 --rounds 1   # shorter

Both sides: the bundled model + LoRA r 8 (all linear layers), the third phase of the demo
(training `reason` from its train tasks), 8 prompts x 8 samples, 64 new tokens, temperature 1,
GRPO token-mean loss, AdamW lr 1e-3, grad clip 1, no KL, seed 0, torch threads --threads.
The skill-safe side protects gen and repair with the demo's memory settings by default
(--memory_prompts 16 x 4 samples per skill, --batch_prompts 8 per estimate, refresh every
--refresh_every steps, realised-change measurement on unless --no_realised). The sides
alternate in one process (plain, safe, plain, safe, ...; one Sandbox(workers=2) shared), each round a fresh trainer: a warm-up step, then --steps timed
optimizer steps, each timed from on_step_begin to on_step_end (generation, rewards, loss,
backward, optimizer, callbacks). With --steps a multiple of --refresh_every the timed steps
hold their share of memory refreshes (refreshes fall on steps 0, r, 2r, ...; step 0 is the
warm-up). The callback's own time (before + after hooks) is measured separately. Reported:
mean and median step time per side, the ratio of the means (the amortised overhead), and the
hook time split into refresh steps and the others. Output: a table and
benchmarks/results/trl_skill_safe_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
OUT = REPO / "benchmarks" / "results" / "trl_skill_safe_overhead.json"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps per side per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--refresh_every", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory_prompts", type=int, default=16)
    ap.add_argument("--batch_prompts", type=int, default=8, help="memory prompts per gradient estimate (x 4 samples)")
    ap.add_argument("--no_realised", action="store_true", help="skip the realised-change forward per skill")
    ap.add_argument("--out", default=str(OUT))
    return ap.parse_args(argv)


def run_side(side: str, args, world, sandbox, tmp: str) -> dict:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from retainrl.integrations.trl import attach_skill_safety, skill_rewards, tasks_to_dataset
    from retainrl.policy.model import resolve_model_path

    path = resolve_model_path("bundled")
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = GRPOConfig(output_dir=tmp, use_cpu=True, gradient_checkpointing=False, per_device_train_batch_size=64,
                     num_generations=8, max_completion_length=64, temperature=1.0, top_k=0, beta=0.0,
                     loss_type="dapo", learning_rate=1e-3, lr_scheduler_type="constant", max_grad_norm=1.0,
                     max_steps=1 + args.steps, logging_steps=1, save_strategy="no", report_to="none",
                     disable_tqdm=True, seed=0)
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, a, state, control, **kw):
            self.t = time.perf_counter()

        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter() - self.t)

    skills = ["gen", "repair", "reason"]
    trainer = GRPOTrainer(model=model, reward_funcs=skill_rewards(sandbox, skills), args=cfg,
                          train_dataset=tasks_to_dataset({"reason": world["reason"]["train"]}, conversational=True),
                          processing_class=tok, callbacks=[Timer()],
                          peft_config=LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    trainer.remove_callback(PrinterCallback)
    hook_s: list[float] = []
    if side == "safe":
        cb = attach_skill_safety(trainer, ["gen", "repair"], {s: world[s]["train"] for s in skills}, sandbox, eps=0.0,
                                 refresh_every=args.refresh_every, memory_prompts=args.memory_prompts,
                                 memory_samples=4, batch_prompts=args.batch_prompts,
                                 measure_realised=not args.no_realised)
        before, after = cb.hooks.before, cb.hooks.after

        def timed_before(params, step):
            t = time.perf_counter()
            before(params, step)
            hook_s.append(time.perf_counter() - t)

        def timed_after(params):
            t = time.perf_counter()
            out = after(params)
            hook_s[-1] += time.perf_counter() - t
            return out

        cb.hooks.before, cb.hooks.after = timed_before, timed_after
    trainer.train()
    timed = hook_s[1:]  # timed hook i belongs to step i + 1 (step 0 is the warm-up)
    return {"steps_s": times[1:], "warmup_s": times[0], "hook_s": timed,
            "refresh_hook_s": [h for i, h in enumerate(timed) if (i + 1) % args.refresh_every == 0],
            "other_hook_s": [h for i, h in enumerate(timed) if (i + 1) % args.refresh_every != 0]}


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from retainrl.data.world import WorldConfig, make_world
    from retainrl.verify import Sandbox

    torch.set_num_threads(args.threads)
    world = make_world(WorldConfig(seed=0, n_train=400, n_heldout=1, skills=("gen", "repair", "reason")))
    rec = {"plain": [], "safe": []}
    hooks: list[float] = []
    refresh: list[float] = []
    other: list[float] = []
    with Sandbox(workers=2) as sb, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for side in ("plain", "safe"):
                out = run_side(side, args, world, sb, tmp)
                rec[side] += out["steps_s"]
                hooks += out["hook_s"]
                refresh += out.get("refresh_hook_s", [])
                other += out.get("other_hook_s", [])
                print(f"round {r} {side:>5}: mean step {statistics.mean(out['steps_s']):.2f} s "
                      f"(warm-up {out['warmup_s']:.2f} s)", flush=True)
    res = {
        "args": vars(args), "loadavg": list(os.getloadavg()),
        "plain_mean_s": statistics.mean(rec["plain"]), "safe_mean_s": statistics.mean(rec["safe"]),
        "plain_median_s": statistics.median(rec["plain"]), "safe_median_s": statistics.median(rec["safe"]),
        "ratio_of_means": statistics.mean(rec["safe"]) / statistics.mean(rec["plain"]),
        "hook_mean_s": statistics.mean(hooks) if hooks else None,
        "hook_refresh_step_mean_s": statistics.mean(refresh) if refresh else None,
        "hook_other_step_mean_s": statistics.mean(other) if other else None,
        "steps": rec, "hooks_s": hooks,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"plain  mean {res['plain_mean_s']:.2f} s  median {res['plain_median_s']:.2f} s  ({len(rec['plain'])} steps)")
    print(f"safe   mean {res['safe_mean_s']:.2f} s  median {res['safe_median_s']:.2f} s  ({len(rec['safe'])} steps)")
    print(f"ratio of means {res['ratio_of_means']:.3f}; callback {res['hook_mean_s']:.2f} s/step "
          f"(refresh steps {res['hook_refresh_step_mean_s']:.2f} s, others {res['hook_other_step_mean_s']:.2f} s)")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
