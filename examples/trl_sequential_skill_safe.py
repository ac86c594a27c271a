#!/usr/bin/env python
"""Sequential gen -> repair -> reason with TRL's GRPOTrainer on the bundled model (CPU), plain vs skill-safe.

    pip install 'retainrl[trl]'
    python examples/trl_sequential_skill_safe.py                  # 10 steps per phase, both methods
    python examples/trl_sequential_skill_safe.py --steps 2 --heldout 8   # a quick look

What it shows: the two retainrl pieces a TRL user adds to an ordinary GRPOTrainer run.
  rewards   retainrl.integrations.trl.skill_rewards(sandbox, skills): one sandboxed verifier per
            skill, routed by the dataset's `skill` column (TRL logs rewards/<skill>/mean).
  safety    attach_skill_safety(trainer, protected=<skills of earlier phases>, ...): the step
            Adam takes is projected so that no protected skill's memory objective decreases to
            first order (eps = 0), the same layer as `retainrl train safety.enabled=true`.

Settings follow `retainrl demo` (retainrl/configs/demo.yaml): world seed 0, version 2, 400 train
and 100 held-out tasks per skill; LoRA r 8 / alpha 16 on every linear layer; 8 prompts x 8 samples per
step, temperature 1, 64 new tokens; GRPO with token-mean loss (TRL loss_type "dapo"), clip
0.2, no KL, AdamW lr 1e-3, grad-norm clip 1.0; memories of 16 prompts x 4 samples, 8 prompts
per estimate, refreshed every 5 steps. One trainer per phase on the same LoRA model (the
optimizer restarts each phase). After each phase every skill's greedy held-out pass@1 is
measured (retainrl.evaluate), which fills the R matrix; forgetting, BWT and the target gains
come from retainrl.metrics.retention.summarize, as for retainrl's own runs. Results:
<out>/<method>/summary.json, metrics.jsonl (phase-end evaluations) and log_history.json (TRL's
logs), a table on stdout; `retainrl report <out>` makes the figures and tables from them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PHASES = ("gen", "repair", "reason")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per phase")
    ap.add_argument("--methods", default="plain,skill_safe", help="comma-separated: plain, skill_safe")
    ap.add_argument("--heldout", type=int, default=100, help="held-out tasks per skill")
    ap.add_argument("--world_version", type=int, default=2, choices=(1, 2), help="built-in world version")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the sandbox needs a core)")
    ap.add_argument("--out", default=None, help="results folder (default: a temporary one)")
    return ap.parse_args(argv)


def grpo_config(args, out_dir: str):
    from trl import GRPOConfig

    return GRPOConfig(output_dir=out_dir, use_cpu=True, bf16=False, gradient_checkpointing=False,
                      per_device_train_batch_size=64, num_generations=8, gradient_accumulation_steps=1,
                      max_completion_length=64, temperature=1.0, top_p=1.0, top_k=0, beta=0.0, epsilon=0.2,
                      loss_type="dapo", learning_rate=1e-3, lr_scheduler_type="constant", weight_decay=0.0,
                      optim="adamw_torch", max_grad_norm=1.0, max_steps=args.steps, shuffle_dataset=True,
                      logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True,
                      log_completions=False, seed=args.seed)


def run_method(method: str, args, world, sandbox, out_dir: Path) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOTrainer

    from retainrl.integrations.trl import attach_skill_safety, evaluate_skills, skill_rewards, tasks_to_dataset
    from retainrl.metrics.retention import summarize
    from retainrl.policy.model import resolve_model_path

    torch.manual_seed(args.seed)
    path = resolve_model_path("bundled")
    tok = AutoTokenizer.from_pretrained(path, padding_side="left")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear",
                                      task_type="CAUSAL_LM"))
    skills = list(PHASES)
    train = {s: world[s]["train"] for s in skills}
    heldout = {s: world[s]["heldout"] for s in skills}
    rewards = skill_rewards(sandbox, skills)
    R, logs, t0 = [], [], time.monotonic()
    for phase, skill in enumerate(PHASES):
        trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=grpo_config(args, str(out_dir / skill)),
                              train_dataset=tasks_to_dataset({skill: train[skill]}, conversational=True),
                              processing_class=tok)
        trainer.remove_callback(PrinterCallback)  # one dict per log line on stdout; log_history keeps it all
        if not R:
            R.append(evaluate_skills(trainer, heldout, sandbox))
            print(f"  [{method}] before training: {R[-1]}", flush=True)
        if method == "skill_safe" and phase > 0:
            attach_skill_safety(trainer, protected=list(PHASES[:phase]), memory_tasks=train, sandbox=sandbox,
                                eps=0.0, refresh_every=5, memory_prompts=16, memory_samples=4, batch_prompts=8,
                                rows_every=1, measure_realised=True)  # the demo's settings, not the defaults
        trainer.train()
        R.append(evaluate_skills(trainer, heldout, sandbox))
        logs += [{"phase": skill, **h} for h in trainer.state.log_history]
        print(f"  [{method}] after {skill} ({time.monotonic() - t0:.0f} s): {R[-1]}", flush=True)
    summary = summarize(skills, list(PHASES), [[row[s] for s in skills] for row in R])
    summary.update(method=method, seed=args.seed, algo="grpo", protocol="sequential",
                   steps=args.steps * len(PHASES), wall_s=time.monotonic() - t0)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    # the phase-end evaluations in retainrl's metrics.jsonl layout, so `retainrl report <out>` reads the runs
    with open(out_dir / "metrics.jsonl", "w") as f:
        for phase, row in enumerate(R):
            for s in skills:
                f.write(json.dumps({"kind": "eval", "eval_kind": "phase_end", "step": phase * args.steps,
                                    "skill": s, "pass@1": row[s]}) + "\n")
    (out_dir / "log_history.json").write_text(json.dumps(logs, indent=1, default=str))
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from retainrl.data.world import WorldConfig, make_world
    from retainrl.verify import Sandbox

    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in ("plain", "skill_safe")]
    if bad:
        print(f"unknown method(s) {bad}; expected plain, skill_safe", file=sys.stderr)
        return 2
    out = Path(args.out or tempfile.mkdtemp(prefix="trl_seq_"))
    # the world is fixed (seed 0, version 2, as `retainrl demo`); --seed is the run's seed
    world = make_world(WorldConfig(seed=0, version=args.world_version, n_train=400, n_heldout=args.heldout,
                                   skills=PHASES))
    results = {}
    with Sandbox(workers=2) as sandbox:
        for method in methods:
            (out / method).mkdir(parents=True, exist_ok=True)
            results[method] = run_method(method, args, world, sandbox, out / method)
    print(f"\n{'method':<11} {'final gen/repair/reason':<26} {'forgetting':>10} {'bwt':>7} {'gains':>20} {'wall s':>7}")
    for m, s in results.items():
        final = "/".join(f"{s['final'][k]:.3f}" for k in PHASES)
        gains = "/".join(f"{g:+.2f}" for g in s["target_gain"])
        print(f"{m:<11} {final:<26} {s['forgetting']:>10.3f} {s['bwt']:>7.3f} {gains:>20} {s['wall_s']:>7.0f}")
    print(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
