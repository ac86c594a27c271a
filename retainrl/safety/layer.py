"""Where the projection meets the optimizer: the skill-safe step.

Called by train.objective.update in place of `optimizer.step()` once the target gradient g
(the RL loss of the skills being trained, plus any penalty, clipped) sits in `.grad`:

1. Protected skills (SafetyConfig.protect: skills of earlier phases, or every skill not being
   trained; mixed protocol: every skill) that are switched on (always, or by the trigger) each
   get a gradient estimate G_s = -grad J_s from their memory (estimates.SkillMemory): one extra
   forward + backward each, LoRA parameters only.
2. Under torch.distributed, g and every G_s are all-reduced (mean) before projecting, so every
   rank projects the same vectors and applies the same update.
3. space="grad": d* = project(g, G, eps) is written into .grad and the optimizer steps. With SGD
   that is the guarantee; with Adam the preconditioner changes the direction afterwards (the
   cheap, approximate mode).
   space="step": the optimizer computes its step Delta from g as usual (its moments updated
   from g, so its statistics remain those of the target objective), then the parameters are
   put back and theta + Delta* is applied with -Delta* = project(-Delta, G, eps): the
   constraint <grad J_s, Delta*> >= -eps_s holds for the update actually applied.
4. Diagnostics: pairwise cosines of the gradients, active constraints, ||delta - g|| / ||g||,
   predicted first-order change of each J_s (<grad J_s, Delta applied>), and the realised
   change of J_s on the same memory rows after the step.
"""

from __future__ import annotations

import torch

from retainrl.safety.estimates import SkillMemory
from retainrl.safety.project import project_sequential, project_with_info
from retainrl.train.distributed import all_sum


def flat_grad(params) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float() for p in params])


def flat_params(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1).float() for p in params])


def write_flat(params, flat: torch.Tensor, attr: str) -> None:
    """Write a flat vector into each parameter's .grad (attr='grad') or data (attr='data')."""
    offset = 0
    for p in params:
        n = p.numel()
        piece = flat[offset:offset + n].view_as(p).to(p.dtype)
        if attr == "grad":
            p.grad = piece.clone()
        else:
            p.data.copy_(piece)
        offset += n


def allreduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks when torch.distributed is initialised; identity otherwise."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def project_update(g: torch.Tensor, G: torch.Tensor, eps: torch.Tensor | float, eps_mode: str, solver: str):
    """(projected (d,), metrics) of g against rows of G, exact or sequential."""
    if G.shape[0] == 0:
        return g, {"proj/num_active": 0.0, "proj/rel_change": 0.0}
    if solver == "sequential":
        d = project_sequential(g, G, eps, eps_mode=eps_mode)
        _, info = project_with_info(d, G, eps if eps_mode == "absolute" else 0.0)
        rel = float((d - g).norm() / g.norm()) if g.norm() > 0 else 0.0
        return d, {"proj/rel_change": rel, "proj/left_violated": float((info.violation_before > 1e-9).sum())}
    d, info = project_with_info(g, G, eps, eps_mode=eps_mode)
    return d, info.metrics()


def safe_step(params, opt, g: torch.Tensor, G: torch.Tensor, eps, eps_mode: str, space: str, solver: str):
    """Apply one skill-safe optimizer step; returns (applied step (d,), projection metrics).

    g: (d,) target loss gradient; G: (S, d) protected skills' loss gradients (-grad J_s), both
    already averaged over ranks. space="grad" projects g and lets the optimizer step from it;
    space="step" lets the optimizer propose Delta from g, then applies -project(-Delta, G, eps).
    """
    before = flat_params(params)
    if space == "grad":
        d, pm = project_update(g, G, eps, eps_mode, solver)
        write_flat(params, d, "grad")
        opt.step()
    else:
        write_flat(params, g, "grad")
        opt.step()  # the optimizer's own step from the target gradient (moments updated)
        proposed = flat_params(params) - before
        u, pm = project_update(-proposed, G, eps, eps_mode, solver)
        write_flat(params, before - u, "data")
    return flat_params(params) - before, pm


class SafetyLayer:
    def __init__(self, cfg, trainer):
        self.cfg = cfg.safety
        self.trainer = trainer
        self.memories: dict[str, SkillMemory] = {}
        self.reference: dict[str, float] = {}
        self.triggered: dict[str, bool] = {}
        self.events: list[dict] = []

    # -- which skills are protected -------------------------------------------------------
    def protected_skills(self) -> list[str]:
        t = self.trainer
        current = t.phases[t.phase]
        if t.cfg.protocol.kind == "mixed":
            return list(current)
        if self.cfg.protect == "earlier":
            return [s for p in t.phases[:t.phase] for s in p if s not in current]
        # "others": every skill not trained now that has training prompts to estimate a gradient from
        return [s for s in t.skills if s not in current and t.train_tasks.get(s)]

    def active_skills(self) -> list[str]:
        prot = self.protected_skills()
        if not self.cfg.trigger:
            return prot
        t = self.trainer
        out = []
        # the memory reward comes from this rank's own rollouts: under data parallelism a
        # constraint is on when it is on for any rank, so every rank projects on the same set
        refs, nows = {}, {}
        for s in prot:
            curve = t.curves.get(s) or []
            refs[s] = self.reference.setdefault(s, max(curve) if curve else 0.0)
            nows[s] = (self.memories[s].mean_reward if self.cfg.trigger_source == "memory" and s in self.memories
                       else (curve[-1] if curve else refs[s]))
        votes = all_sum([float((refs[s] - nows[s]) > self.cfg.tau) for s in prot])
        for s, vote in zip(prot, votes):
            ref, now = refs[s], nows[s]
            on = vote > 0
            if on and not self.triggered.get(s):
                self.events.append({"step": t.global_step + 1, "skill": s, "reference": ref, "value": now})
            self.triggered[s] = on
            if on:
                out.append(s)
        return out

    def memory(self, skill: str) -> SkillMemory:
        if skill not in self.memories:
            t = self.trainer
            self.memories[skill] = SkillMemory(skill, t.train_tasks[skill], self.cfg.memory_prompts,
                                               self.cfg.memory_samples, seed=t.cfg.seed * 1009 + len(self.memories))
        return self.memories[skill]

    # -- the step --------------------------------------------------------------------------
    def step(self) -> dict:
        t, cfg = self.trainer, self.cfg
        params = t.policy.trainable_parameters()
        skills = self.active_skills()
        metrics: dict[str, float] = {"safety/num_protected": float(len(skills))}
        if not skills:
            t.opt.step()
            return metrics
        g = allreduce_mean(flat_grad(params))
        rows_used, G_rows, J_before = {}, [], {}
        for s in skills:  # one extra backward per protected skill
            mem = self.memory(s)
            if mem.rollout is None or t.global_step - mem.refreshed_at >= cfg.refresh_every:
                mem.refresh(t.policy, t.sandbox, t.cfg.sampling, seed=t.cfg.seed * 7 + t.global_step * 13 + len(s),
                            step=t.global_step)
            rows = mem.batch_rows(cfg.batch_prompts)
            for p in params:
                p.grad = None
            J = mem.surrogate(t.policy, rows, cfg.is_clip)
            (-J).backward()
            G_rows.append(allreduce_mean(flat_grad(params)))
            rows_used[s], J_before[s] = rows, float(J.detach())
            metrics[f"safety/memory_reward/{s}"] = mem.mean_reward
        G = torch.stack(G_rows)
        applied, pm = safe_step(params, t.opt, g, G, self._eps(skills), cfg.eps_mode, cfg.space, cfg.solver)
        metrics.update({k.replace("proj/", "safety/"): v for k, v in pm.items()})
        for i, s in enumerate(skills):
            metrics[f"safety/predicted_dJ/{s}"] = float(-(G[i].double() @ applied.double()))
            if cfg.measure_realised:
                with torch.no_grad():
                    after = float(self.memories[s].surrogate(t.policy, rows_used[s], cfg.is_clip))
                metrics[f"safety/realised_dJ/{s}"] = after - J_before[s]
        names = ["target"] + skills
        vecs = torch.cat([g[None], G]).double()
        norms = vecs.norm(dim=1).clamp(min=1e-30)
        cos = (vecs @ vecs.T) / (norms[:, None] * norms[None, :])
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                metrics[f"safety/cos/{names[i]}~{names[j]}"] = float(cos[i, j])
        return metrics

    def _eps(self, skills: list[str]):
        per = self.cfg.eps_per_skill or {}
        vals = [float(per.get(s, self.cfg.eps)) for s in skills]
        return torch.tensor(vals, dtype=torch.float64)

    # -- checkpointing ---------------------------------------------------------------------
    def state(self) -> dict:
        return {"reference": self.reference, "triggered": self.triggered, "events": self.events,
                "memories": {s: {k: getattr(m, k) for k in ("tasks", "rollout", "advantages", "behaviour", "cursor",
                                                             "refreshed_at", "mean_reward")}
                             for s, m in self.memories.items()}}

    def load_state(self, state: dict) -> None:
        self.reference, self.triggered, self.events = state["reference"], state["triggered"], state["events"]
        for s, d in state["memories"].items():
            m = self.memory(s)
            for k, v in d.items():
                setattr(m, k, v)

