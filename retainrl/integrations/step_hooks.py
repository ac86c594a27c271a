"""The skill-safe step split around an optimizer step that someone else's loop takes.

retainrl's own trainer calls `SafetyLayer.step`, which takes the optimizer step itself. A
foreign loop (transformers' Trainer, TRL's GRPOTrainer) calls `optimizer.step()` on its own and
offers a hook just before and just after it. `SkillSafeStep` is the layer's step-space update
cut at that point, with the same parts and the same numbers:

  before(params, step)   (target gradient g in .grad, already reduced over ranks and clipped)
      1. skills = layer.switched_on(protected, step): the same switch (trigger or not) as the layer.
      2. memories due for a refresh (every refresh_every steps) are regenerated through
         `generation_policy()` (for TRL: a Policy around `unwrap_model_for_generation`), with the
         layer's rule and seeds (`SafetyLayer.refresh_if_due`: the memory its constraint uses).
      3. rows G (K, d) and slacks from the layer's constraint builder (CONSTRAINTS, e.g.
         "skill_mean": -grad J_s of each memory surrogate, rank-averaged); the builder's backward
         replaces .grad, so the loop's gradient tensors are put back afterwards, untouched.
         With the layer's rows_every = k > 1 (SafetyConfig) the builder reuses its forward +
         backward for k steps (the rows as they were up to k - 1 steps ago; layer.py).
      4. space "grad": g is projected now and written to .grad. space "step": the parameters
         theta are snapshotted.
  optimizer.step()       (the loop's own; Adam's moments see the target gradient)
  after(params)
      space "step": Delta = theta' - theta is the step the optimizer took; -Delta* =
      project(-Delta, G, eps) is the layer's projection (project_update) and theta + Delta* is
      written back, so <grad J_s, Delta*> >= -eps_s holds for the update actually applied.
      When the projection leaves the step unchanged (no active constraint) nothing is written:
      the step is bit-identical to the loop without the hooks.
      Diagnostics are the layer's (predicted and realised dJ_s, cosines), under `prefix`.

Sharded parameters (FSDP2 `fully_shard`, DTensors): every flat vector is this rank's local
shard (retainrl.parallel), .grad is already averaged by FSDP's reduce-scatter, the rows' backward
goes through the sharded model (each rank computes the same memory rows, so the averaged shard
is the row's shard), and the projection and diagnostics sum their dot products over the ranks
(project.py `sharded`): each rank projects and writes back its own shard of the same step.
"skill_mean" rows only (the layer refuses prompt_ll* on sharded parameters).

Random state: everything the hooks do (memory sampling, surrogate forwards) runs under
torch.random.fork_rng, so the host loop's random stream (its own generation) is the same with
and without the hooks.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager

import torch

from retainrl.parallel import all_max, flat_grad, flat_params, set_grads, set_params
from retainrl.safety.layer import SafetyLayer, project_update


class SkillSafeStep:
    """before()/after() around a foreign optimizer step; see the module docstring.

    layer: a SafetyLayer (its cfg: eps, eps_mode, space, solver, memory sizes, refresh_every,
    trigger); protected: the skills to protect; sandbox: the verifier of memory refreshes;
    policy: a retainrl Policy around the trained model (the surrogates' forward + backward);
    generation_policy: () -> context manager yielding the Policy to generate memory rollouts
    with (default: `policy`); prefix: metric namespace."""

    def __init__(self, layer: SafetyLayer, protected: list[str], sandbox, policy,
                 generation_policy: Callable[[], ContextManager] | None = None, prefix: str = "skill_safe"):
        if getattr(layer.cfg, "act_subspace", "off") in ("both", "input"):  # "auto" is off here
            raise ValueError("safety.act_subspace is not supported in the step hooks (TRL and other loops) yet: it "
                             "projects the optimizer's step inside SafetyLayer.step; use act_subspace=off here")
        self.layer, self.protected, self.sandbox, self.policy = layer, list(protected), sandbox, policy
        self.generation_policy = generation_policy or (lambda: contextlib.nullcontext(policy))
        self.prefix = prefix
        self.pending: dict | None = None
        self.last_rows: torch.Tensor | None = None   # G of the latest step with constraints (for checks)
        self.calls = {"before": 0, "after": 0}

    def _rng(self):
        dev = self.policy.device
        return torch.random.fork_rng(devices=[dev] if getattr(dev, "type", "cpu") == "cuda" else [])

    def _refresh_due(self, skills: list[str], step: int) -> None:
        """Refresh the memories the layer's constraint will use, generating through the trainer's
        generation policy (the layer's rule and seeds: `SafetyLayer.refresh_if_due`)."""
        due = [s for s in skills if self.layer.memory_due(step, s)]
        if not due:  # most steps: no generation context to enter
            return
        model = self.policy.model
        was_training = model.training
        with self.generation_policy() as gen_policy:
            for s in due:
                self.layer.refresh_if_due(gen_policy, self.sandbox, step, s)
        model.train(was_training)  # retainrl's generate leaves the model in eval mode

    def before(self, params: list[torch.nn.Parameter], step: int) -> None:
        """Call with the target gradient in .grad, right before optimizer.step()."""
        self.calls["before"] += 1
        self.pending = None
        skills = self.layer.switched_on(self.protected, step)
        if not skills:
            self.pending = {"skills": []}
            return
        with self._rng():
            g = flat_grad(params)
            self._refresh_due(skills, step)
            saved = [p.grad for p in params]
            was_training = self.policy.model.training
            cons = self.layer.build_rows(self.layer, self.policy, params, self.sandbox, step, skills)
            self.policy.model.train(was_training)
            for p, grad in zip(params, saved):  # the loop's own gradient tensors, untouched
                p.grad = grad
        cfg = self.layer.cfg
        pending = {"skills": skills, "g": g, "cons": cons, "step": step}
        if cfg.space == "grad":
            d, pm = project_update(g, cons.G, cons.eps, cons.eps_mode, cfg.solver, cons.sharded)
            if not torch.equal(d, g):
                set_grads(params, d)
            pending["pm"] = pm
        pending["before"] = flat_params(params)
        self.pending = pending
        self.last_rows = cons.G

    def after(self, params: list[torch.nn.Parameter]) -> dict[str, float]:
        """Call right after optimizer.step(); returns <prefix>/* metrics of this step."""
        self.calls["after"] += 1
        pending, self.pending = self.pending, None
        if pending is None:
            raise RuntimeError("SkillSafeStep.after() without before(): the hooks must bracket every optimizer step")
        p = self.prefix
        skills = pending["skills"]
        metrics: dict[str, float] = {f"{p}/num_protected": float(len(skills))}
        if not skills:
            return metrics
        cfg, cons, before = self.layer.cfg, pending["cons"], pending["before"]
        proposed = flat_params(params) - before
        if cfg.space == "step":
            u, pm = project_update(-proposed, cons.G, cons.eps, cons.eps_mode, cfg.solver, cons.sharded)
            if torch.equal(u, -proposed):
                applied = proposed
            else:
                set_params(params, before - u)
                applied = -u
            changed = float(not torch.equal(applied, proposed))
            # sharded: a rank whose columns the projection left alone still took a projected step
            projected = all_max([changed])[0] if cons.sharded else changed
        else:
            applied, pm = proposed, pending["pm"]
            projected = float(pm.get("proj/num_active", 0.0) > 0)
        metrics[f"{p}/projected"] = projected
        if len(set(cons.owners)) == len(cons.owners):  # one row per skill: per-row keys s0, s1, ... named by skill
            for i, s in enumerate(cons.owners):
                pm = {k.replace(f"/s{i}", f"/{s}") if k.endswith(f"/s{i}") else k: v for k, v in pm.items()}
        metrics.update({k.replace("proj/", f"{p}/", 1): v for k, v in pm.items()})
        if "proj/num_active" in pm and cons.G.shape[0]:
            metrics[f"{p}/active_frac"] = pm["proj/num_active"] / cons.G.shape[0]
        for s in skills:  # the memory the constraint used (GRPO rollouts or verified answers), as the layer logs it
            if s in self.layer.memories:
                metrics[f"{p}/memory_reward/{s}"] = self.layer.memories[s].mean_reward
            if s in self.layer.answer_memories:
                metrics[f"{p}/memory_pass/{s}"] = self.layer.answer_memories[s].pass_rate
        with self._rng(), torch.no_grad():
            diag = self.layer._diagnostics(pending["g"], cons, applied,
                                           cfg.measure_realised and self.layer.diagnosing(pending["step"]))
        metrics.update({k.replace("safety/", f"{p}/", 1): v for k, v in diag.items()})
        return metrics
