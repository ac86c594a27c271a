#!/usr/bin/env python
"""Overhead of the skill-safe callback in TRL: a GRPOTrainer step with attach_skill_safety and 2
protected skills vs a plain GRPOTrainer step, side by side on the bundled model (CPU).

    .venv/bin/python benchmarks/trl_skill_safe_overhead.py                 # 2 rounds x (1 warm-up + 10 timed) per side
    .venv/bin/python benchmarks/trl_skill_safe_overhead.py --steps 5 --rounds 1   # shorter

Both sides: the bundled model + LoRA r 8 (all linear layers), the third phase of the demo
(training `reason` from its train tasks), 8 prompts x 8 samples, 64 new tokens, temperature 1,
GRPO token-mean loss, AdamW lr 1e-3, grad clip 1, no KL, seed 0, torch threads --threads.
The skill-safe side protects gen and repair with attach_skill_safety's defaults (8 memory
prompts x 4 samples per skill, 4 prompts per estimate, refresh every 10 steps, rows recomputed
every 5 steps, no realised-change forward), or the flags --memory_prompts / --batch_prompts / --refresh_every /
--realised / --rows_every;
--demo_memory: the demo's memory (16 x 4, 8 per estimate, refresh every 5, rows every step,
realised on). The sides
alternate in one process (plain, safe, plain, safe, ...; one Sandbox(workers=2) shared), each round a fresh trainer: a warm-up step, then --steps timed
optimizer steps, each timed from on_step_begin to on_step_end (generation, rewards, loss,
backward, optimizer, callbacks). With --steps a multiple of --refresh_every the timed steps
hold their share of memory refreshes (refreshes fall on steps 0, r, 2r, ...; step 0 is the
warm-up). The callback's own time (before + after hooks) is measured separately. Reported:
mean and median step time per side, the ratio of the means (the amortised overhead), the hook
time over the plain mean step (the same overhead, less exposed to load swings between the sides),
the hook time split into refresh steps and the others, and with --profile the parts of a step. Output: a table and
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
    ap.add_argument("--refresh_every", type=int, default=None, help="default: attach_skill_safety's (10)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory_prompts", type=int, default=None, help="default: attach_skill_safety's (8)")
    ap.add_argument("--batch_prompts", type=int, default=None,
                    help="memory prompts per gradient estimate (x 4 samples); default: attach_skill_safety's (4)")
    ap.add_argument("--realised", action="store_true", help="measure the realised change (one forward per skill)")
    ap.add_argument("--rows_every", type=int, default=None,
                    help="safety.rows_every: recompute the rows every this many steps, reused in between "
                         "(default: attach_skill_safety's, 5; 1: exact rows every step)")
    ap.add_argument("--demo_memory", action="store_true",
                    help="the demo's memory: 16 prompts, 8 per estimate, refresh every 5, realised on")
    ap.add_argument("--profile", action="store_true",
                    help="also time the callback's parts (refresh: generate / verify / behaviour log-probs; rows; "
                         "projection; diagnostics incl. the realised-change forward) and TRL's generation")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    if args.demo_memory:
        args.memory_prompts, args.batch_prompts, args.realised = 16, 8, True
        args.rows_every = args.rows_every or 1
        args.refresh_every = args.refresh_every or 5
    args.refresh_every = args.refresh_every or 10
    return args


class PartTimer:
    """Inclusive wall time of named functions, patched onto their modules / classes for one side."""

    def __init__(self):
        self.total: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self._undo: list = []

    def wrap(self, owner, attr: str, name: str) -> None:
        fn = getattr(owner, attr)

        def timed(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - t
                self.calls[name] = self.calls.get(name, 0) + 1

        setattr(owner, attr, timed)
        self._undo.append((owner, attr, fn))

    def undo(self) -> None:
        for owner, attr, fn in reversed(self._undo):
            setattr(owner, attr, fn)
        self._undo.clear()


def profile_parts(trainer, cb) -> PartTimer:
    """Patch timers onto the pieces a step runs (inclusive times; refresh contains generate/verify)."""
    import retainrl.integrations.step_hooks as sh
    import retainrl.safety.estimates as est

    pt = PartTimer()
    pt.wrap(trainer, "_generate_and_score_completions", "trl/generate_and_score")
    if cb is not None:
        pt.wrap(est.SkillMemory, "refresh", "refresh")
        pt.wrap(est.AnswerMemory, "refresh", "refresh")
        pt.wrap(est, "generate", "refresh/generate")
        pt.wrap(est, "verify_many", "refresh/verify")
        layer = cb.hooks.layer
        pt.wrap(layer, "build_rows", "rows")
        pt.wrap(layer, "_diagnostics", "diagnostics")
        pt.wrap(sh, "project_update", "projection")
    return pt


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
    settings: dict = {}
    if side == "safe":
        memory = {k: v for k, v in (("memory_prompts", args.memory_prompts), ("batch_prompts", args.batch_prompts))
                  if v is not None}
        if args.realised:
            memory["measure_realised"] = True
        if args.rows_every is not None:
            memory["rows_every"] = args.rows_every
        cb = attach_skill_safety(trainer, ["gen", "repair"], {s: world[s]["train"] for s in skills}, sandbox, eps=0.0,
                                 refresh_every=args.refresh_every, memory_samples=4, **memory)
        settings.update(cb.hooks.layer.cfg.__dict__)
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
    pt = profile_parts(trainer, cb if side == "safe" else None) if args.profile else None
    try:
        trainer.train()
    finally:
        if pt is not None:
            pt.undo()
    timed = hook_s[1:]  # timed hook i belongs to step i + 1 (step 0 is the warm-up)
    return {"steps_s": times[1:], "warmup_s": times[0], "hook_s": timed,
            "refresh_hook_s": [h for i, h in enumerate(timed) if (i + 1) % args.refresh_every == 0],
            "other_hook_s": [h for i, h in enumerate(timed) if (i + 1) % args.refresh_every != 0],
            "safety_config": settings, "parts_s": dict(pt.total) if pt else {}, "parts_calls": dict(pt.calls) if pt else {},
            "all_steps_s": sum(times)}


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
    parts = {"plain": {}, "safe": {}}
    total_s = {"plain": 0.0, "safe": 0.0}
    used: dict = {}
    with Sandbox(workers=2) as sb, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for side in ("plain", "safe"):
                out = run_side(side, args, world, sb, tmp)
                rec[side] += out["steps_s"]
                hooks += out["hook_s"]
                refresh += out.get("refresh_hook_s", [])
                other += out.get("other_hook_s", [])
                total_s[side] += out["all_steps_s"]
                if out["safety_config"]:
                    used = {k: out["safety_config"][k] for k in ("memory_prompts", "memory_samples", "batch_prompts",
                                                                "refresh_every", "rows_every", "measure_realised",
                                                                "constraint",
                                                                "space", "eps", "eps_mode")}
                for k, v in out["parts_s"].items():
                    parts[side][k] = parts[side].get(k, 0.0) + v
                print(f"round {r} {side:>5}: mean step {statistics.mean(out['steps_s']):.2f} s "
                      f"(warm-up {out['warmup_s']:.2f} s)", flush=True)
    res = {
        "args": vars(args), "safety_settings": used, "loadavg": list(os.getloadavg()),
        "plain_mean_s": statistics.mean(rec["plain"]), "safe_mean_s": statistics.mean(rec["safe"]),
        "plain_median_s": statistics.median(rec["plain"]), "safe_median_s": statistics.median(rec["safe"]),
        "ratio_of_means": statistics.mean(rec["safe"]) / statistics.mean(rec["plain"]),
        "hook_mean_s": statistics.mean(hooks) if hooks else None,
        "hook_over_plain": statistics.mean(hooks) / statistics.mean(rec["plain"]) if hooks else None,
        "hook_refresh_step_mean_s": statistics.mean(refresh) if refresh else None,
        "hook_other_step_mean_s": statistics.mean(other) if other else None,
        "steps": rec, "hooks_s": hooks,
    }
    if args.profile:  # per optimizer step (warm-up included), inclusive
        n = args.rounds * (1 + args.steps)
        res["profile_per_step_s"] = {side: {"step": total_s[side] / n, **{k: v / n for k, v in sorted(parts[side].items())}}
                                     for side in parts}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1))
    print(f"plain  mean {res['plain_mean_s']:.2f} s  median {res['plain_median_s']:.2f} s  ({len(rec['plain'])} steps)")
    print(f"safe   mean {res['safe_mean_s']:.2f} s  median {res['safe_median_s']:.2f} s  ({len(rec['safe'])} steps)")
    print(f"settings {used}")
    print(f"ratio of means {res['ratio_of_means']:.3f}; callback {res['hook_mean_s']:.2f} s/step "
          f"= {res['hook_over_plain']:.3f} of a plain step "
          f"(refresh steps {res['hook_refresh_step_mean_s']:.2f} s, others {res['hook_other_step_mean_s']:.2f} s)")
    for side, d in res.get("profile_per_step_s", {}).items():
        print(f"profile {side:>5} (s per step, inclusive): " + ", ".join(f"{k} {v:.3f}" for k, v in d.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
