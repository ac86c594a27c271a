"""Skill-safe updates inside TRL (and any transformers Trainer): `attach_skill_safety`.

    pip install 'retainrl[trl]'
    from retainrl.integrations.trl import attach_skill_safety, skill_rewards, tasks_to_dataset
    trainer = GRPOTrainer(model, reward_funcs=skill_rewards(sandbox, ["gen", "repair"]),
                          train_dataset=tasks_to_dataset(repair_tasks), args=cfg, ...)
    attach_skill_safety(trainer, protected=["gen"], memory_tasks={"gen": gen_tasks}, sandbox=sandbox,
                        eps=0.0, refresh_every=10)
    trainer.train()

What runs where (transformers 5.x `Trainer._inner_training_loop`, read in 5.24 with TRL 1.16):
once per accumulation window, after gradient clipping, the loop calls the callbacks'
`on_pre_optimizer_step`, then `optimizer.step()`, then `on_optimizer_step` (both get `model`,
the unwrapped model, and `optimizer` in their kwargs, not the trainer, so the callback binds
the trainer when it is attached). The callback runs `SkillSafeStep.before` / `.after` there
(retainrl.integrations.step_hooks): the memories of the protected skills are refreshed every
`refresh_every` steps with a small generate on `trl.models.unwrap_model_for_generation(...)`,
their rows are built by retainrl's layer (the same constraint types, slacks and seeds as
retainrl's own trainer), and the step Adam actually took is projected and written back.

Distributed: under DDP `.grad` is already averaged over ranks in these hooks; the rows are
computed through the unwrapped model (no DDP sync) and averaged with retainrl.parallel, so
every rank projects the same vectors and applies the same parameters. Under FSDP2 (accelerate
fsdp_version 2: fully_shard, DTensor parameters) each rank works on its own shards and the
projection's dot products are all-reduced (step_hooks; "skill_mean" rows only). The hooks are
tested with fully_shard on 2 gloo CPU ranks; the TRL + accelerate FSDP2 path itself is not (on
CPU accelerate 1.15 ignores the fsdp settings and runs DDP). Refused, with the reason:
DeepSpeed (the optimizer step happens inside `accelerator.backward`, so there is no point
between the gradient and the update to project at) and FSDP1 (flattened FlatParameters, not
per-parameter shards).

Metrics: `skill_safe/*` (num_protected, num_active, rel_change, predicted_dJ/<skill>,
realised_dJ/<skill>, memory_reward/<skill>, cos/...) go into TRL's own metric store, so TRL
averages them over each logging window and they reach log_history and every reporter like
TRL's `rewards/*`; with a plain transformers Trainer they are added to the log_history entry
of each log.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager

import torch
from transformers import TrainerCallback

from retainrl.data.task import Task
from retainrl.evaluate import evaluate
from retainrl.integrations.rewards import (dataset_tasks, skill_reward, skill_rewards, task_from_row,  # noqa: F401
                                           tasks_to_dataset, tasks_to_rows)
from retainrl.integrations.step_hooks import SkillSafeStep
from retainrl.policy.model import ModelConfig, Policy
from retainrl.policy.rollout import SamplingConfig
from retainrl.safety.layer import SafetyLayer
from retainrl.train.config import SafetyConfig


class UnsupportedSetup(RuntimeError):
    """The trainer's set-up makes a projected step impossible or unimplemented."""


def check_supported(trainer) -> None:
    """Raise UnsupportedSetup for DeepSpeed and FSDP1, saying why."""
    acc = getattr(trainer, "accelerator", None)
    kind = str(getattr(acc, "distributed_type", "")).upper()
    if getattr(trainer, "is_deepspeed_enabled", False) or "DEEPSPEED" in kind:
        raise UnsupportedSetup(
            "attach_skill_safety: DeepSpeed is not supported: DeepSpeed takes the optimizer step inside "
            "accelerator.backward(), so there is no moment between the gradient and the update where the step "
            "could be projected (the on_pre/on_optimizer_step hooks see an already-updated model). "
            "Use DDP (torchrun / accelerate multi-GPU without DeepSpeed).")
    if (getattr(trainer, "is_fsdp_enabled", False) or "FSDP" in kind) and not getattr(acc, "is_fsdp2", False):
        raise UnsupportedSetup(
            "attach_skill_safety: FSDP1 is not supported: it flattens the parameters into FlatParameters, so the "
            "trainable tensors the callback sees are not per-parameter shards it can project on. Use FSDP2 "
            "(fsdp_config fsdp_version: 2; DTensor shards, shard-local dot products plus an all-reduce) or DDP.")


class SkillSafetyCallback(TrainerCallback):
    """The transformers/TRL side of SkillSafeStep; made by attach_skill_safety."""

    def __init__(self, trainer, hooks: SkillSafeStep):
        self.trainer, self.hooks = trainer, hooks
        self.params: list | None = None
        self.history: list[dict] = []           # per optimizer step: {"step": n, **skill_safe metrics}
        self._unlogged: dict[str, list[float]] = defaultdict(list)

    def _params(self, model):
        params = [p for p in model.parameters() if p.requires_grad]
        if self.params is None:
            self.params = params
        elif len(params) != len(self.params) or any(a is not b for a, b in zip(params, self.params)):
            raise RuntimeError("attach_skill_safety: the trainable parameters changed during training")
        return self.params

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.hooks.before(self._params(model if model is not None else self.trainer.model), state.global_step)

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        metrics = self.hooks.after(self._params(model if model is not None else self.trainer.model))
        self.history.append({"step": state.global_step + 1, **metrics})
        store = getattr(self.trainer, "_metrics", None)
        if isinstance(store, dict) and "train" in store:  # TRL: averaged and logged with its own metrics
            for k, v in metrics.items():
                store["train"][k].append(v)
        else:
            for k, v in metrics.items():
                self._unlogged[k].append(v)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not self._unlogged or not state.log_history:
            return
        means = {k: sum(v) / len(v) for k, v in self._unlogged.items() if v}
        state.log_history[-1].update(means)  # plain Trainer: its log entry was just appended
        if logs is not None:
            logs.update(means)
        self._unlogged.clear()


def _sampling_of(args) -> SamplingConfig:
    """Memory rollouts sampled like TRL's own (temperature, top_p, completion length)."""
    return SamplingConfig(temperature=float(getattr(args, "temperature", 1.0) or 1.0),
                          top_p=float(getattr(args, "top_p", 1.0) or 1.0),
                          max_new_tokens=int(getattr(args, "max_completion_length", 64) or 64))


def _conversational(trainer) -> bool:
    ds = getattr(trainer, "train_dataset", None)
    try:
        return ds is not None and isinstance(ds[0]["prompt"], list)
    except (KeyError, IndexError, TypeError):
        return False


def trainer_policy(trainer, model=None) -> Policy:
    """A retainrl Policy around the trainer's model (or `model`), its tokenizer and device; prompts
    go through the chat template when the training dataset is conversational, as TRL does."""
    tok = trainer.processing_class
    tok = getattr(tok, "tokenizer", tok)  # a processor wraps its tokenizer
    cfg = ModelConfig(chat_template="on" if _conversational(trainer) else "off", lora_dropout=0.0)
    return Policy(trainer.model if model is None else model, tok, trainer.accelerator.device, cfg, None)


@contextmanager
def generation_policy(trainer):
    """The Policy to generate with: TRL's unwrap_model_for_generation (public API) around the model."""
    from trl.models import unwrap_model_for_generation

    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as m:
        yield trainer_policy(trainer, m)


def evaluate_skills(trainer, heldout: dict[str, list[Task]], sandbox, max_new_tokens: int = 64) -> dict[str, float]:
    """Greedy held-out pass@1 per skill of the trainer's current model (retainrl.evaluate, the
    numbers retainrl's own runs put in R); the host loop's random stream and train mode are kept."""
    model = trainer.model
    was_training = model.training
    with torch.random.fork_rng(devices=[]), generation_policy(trainer) as policy:
        out = evaluate(policy, heldout, sandbox, SamplingConfig(max_new_tokens=max_new_tokens))
    model.train(was_training)
    return {s: r["pass@1"] for s, r in out.items()}


# attach_skill_safety's defaults where they differ from SafetyConfig's (retainrl's own runs),
# chosen so that a TRL step with 2 protected skills costs <= 1.15x a plain one on the bundled
# model (benchmarks/trl_skill_safe_overhead.py, docs/LOG.md): a smaller memory than the default
# (8 prompts, 4 per estimate); rows_every=5: each skill's row (one forward + backward over its
# memory batch, the callback's cost on every step that is not a refresh) is recomputed every 5
# steps and reused in between (an approximation: the constraint holds for grad J_s at the parameters of up to 4
# steps ago; rows_every=1 is the exact per-step constraint, about 0.19 of a plain step here);
# the realised-change diagnostic (one more forward per skill, no effect on the step) is opt-in.
# The constraint stays the one issue 15's overhead, equivalence and FSDP2 results were measured with
# (skill_mean, per-step relative slack), not SafetyConfig's default (prompt_ll with the phase budget,
# which forgets less in retainrl's trainer, LOG 2026-12-01 session 6, but has no sharded form and has
# not been measured through TRL): pass constraint="prompt_ll", budget="phase", eps_mode="absolute",
# eps=0.02 for it.
ATTACH_DEFAULTS = {"memory_prompts": 8, "batch_prompts": 4, "rows_every": 5, "measure_realised": False,
                   "constraint": "skill_mean", "budget": "step", "eps_mode": "relative"}


def attach_skill_safety(trainer, protected: list[str], memory_tasks, sandbox, eps: float = 0.0,
                        refresh_every: int = 10, *, eps_mode: str | None = None, sampling: SamplingConfig | None = None,
                        **safety) -> SkillSafetyCallback:
    """Add the skill-safe step to `trainer` (TRL GRPOTrainer or any transformers Trainer); returns the callback.

    protected: skills whose first-order change must stay >= -eps per step; memory_tasks: skill
    -> Tasks (or a dataset made by tasks_to_dataset) the memories are drawn from; sandbox: the
    verifier of memory refreshes (kept open by the caller for the whole run); eps, eps_mode,
    refresh_every and **safety: SafetyConfig fields (memory_prompts, memory_samples,
    batch_prompts, space, solver, is_clip, measure_realised, trigger, tau, trigger_source,
    eps_per_skill; eps_mode: default "relative", ATTACH_DEFAULTS); sampling: memory
    rollout sampling (default: the trainer's temperature, top_p and max_completion_length). Seeds come from trainer.args.seed.
    Defaults that differ from SafetyConfig's (ATTACH_DEFAULTS, for a <= 1.15x step): memory_prompts=8,
    batch_prompts=4 (x memory_samples=4 rows per estimate), refresh_every=10, rows_every=5 (rows
    reused for up to 4 steps: pass rows_every=1 for the exact per-step constraint),
    measure_realised=False (pass True for the realised_dJ/* diagnostic: one more forward per skill
    per step), constraint="skill_mean" with budget="step" and eps_mode="relative" (see ATTACH_DEFAULTS)."""
    safety = {**ATTACH_DEFAULTS, **safety}
    check_supported(trainer)
    if not protected:
        raise ValueError("attach_skill_safety: no protected skills given")
    if not isinstance(memory_tasks, dict):
        memory_tasks = dataset_tasks(memory_tasks)
    missing = [s for s in protected if not memory_tasks.get(s)]
    if missing:
        raise ValueError(f"attach_skill_safety: no memory tasks for protected skill(s) {missing} "
                         f"(memory_tasks has {sorted(memory_tasks)})")
    bad = [t for ts in memory_tasks.values() for t in ts if not isinstance(t, Task)][:1]
    if bad:
        raise ValueError(f"attach_skill_safety: memory_tasks must hold retainrl Tasks, got {type(bad[0]).__name__}")
    if eps_mode is not None:
        safety["eps_mode"] = eps_mode
    cfg = SafetyConfig(enabled=True, eps=eps, refresh_every=refresh_every, **safety)
    if cfg.trigger and cfg.trigger_source != "memory":
        raise ValueError("attach_skill_safety: trigger=True needs trigger_source='memory' (the callback has no "
                         "evaluation curves)")
    layer = SafetyLayer(cfg, memory_tasks, sampling or _sampling_of(trainer.args), seed=int(trainer.args.seed))
    if getattr(getattr(trainer, "accelerator", None), "is_fsdp2", False) and layer.constraint != "skill_mean":
        raise UnsupportedSetup(f"attach_skill_safety: constraint={layer.constraint} has no sharded form under FSDP2 "
                               f"(its per-prompt gradients are formed from whole layer weights); use skill_mean")
    hooks = SkillSafeStep(layer, protected, sandbox, trainer_policy(trainer), lambda: generation_policy(trainer))
    callback = SkillSafetyCallback(trainer, hooks)
    trainer.add_callback(callback)
    return callback
