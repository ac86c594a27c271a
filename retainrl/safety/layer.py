"""Where the projection meets the optimizer: the skill-safe step, as a component.

`SafetyLayer.step(params, optimizer, policy, sandbox, step, protected, curves)` replaces
`optimizer.step()` once the target gradient g (the RL loss of the skills being trained, plus
any penalty, clipped) sits in `.grad` (train.objective.update passes it as `apply`). It takes
every input it needs as an argument, so any trainer can call it:

1. Which skills: `protected_skills(...)` (a pure function of the protocol, the phases and the
   protect rule; the caller passes its result) and, with the trigger on, `trigger_on(...)` (a
   pure function of each skill's reference, current value and tau) decide the skills whose
   constraint is switched on. Under data parallelism a constraint is on when it is on for any
   rank, so every rank projects on the same set.
2. Constraint rows: the builder named by `constraint` (CONSTRAINTS) turns the switched-on
   skills into rows G (K, d) of loss gradients, a slack per row and the skill owning each row
   (a skill may own several rows). "skill_mean" (the only one today): one row per skill,
   G_s = -grad J_s of its memory surrogate
   (estimates.SkillMemory, one extra forward + backward each, LoRA parameters only), slack
   eps_s (SafetyConfig.eps / eps_per_skill, eps_mode).
3. Under torch.distributed g and every row are all-reduced (mean) before projecting, so every
   rank projects the same vectors and applies the same update.
4. space="grad": d* = project(g, G, eps) is written into .grad and the optimizer steps. With SGD
   that is the guarantee; with Adam the preconditioner changes the direction afterwards (the
   cheap, approximate mode).
   space="step": the optimizer computes its step Delta from g as usual (its moments updated
   from g, so its statistics remain those of the target objective), then the parameters are
   put back and theta + Delta* is applied with -Delta* = project(-Delta, G, eps): the
   constraint <grad J_s, Delta*> >= -eps_s holds for the update actually applied.
5. Diagnostics: pairwise cosines of the gradients, active constraints, ||delta - g|| / ||g||,
   predicted first-order change of each J_s (<grad J_s, Delta applied>), and the realised
   change of J_s on the same memory rows after the step.

Seeds: a memory's prompts and each refresh's rollouts come from seeds.derive_seed(run seed,
...) keyed by the skill (and the step), the same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from retainrl.parallel import all_sum, allreduce_mean, flat_grad, flat_params, set_grads, set_params
from retainrl.safety.estimates import SkillMemory
from retainrl.safety.project import project_sequential, project_with_info
from retainrl.seeds import derive_seed


# ----------------------------------------------------------------------------------------
# which skills: pure functions
# ----------------------------------------------------------------------------------------
def protected_skills(protocol: str, protect: str, phases: list[list[str]], phase: int, skills: list[str],
                     trainable: set[str] | dict) -> list[str]:
    """The skills a step of phase `phase` protects.

    protocol "mixed": every skill of the (one) phase, the skills being trained. Otherwise
    protect "earlier": the skills of phases before `phase` not trained now, in phase order;
    "others": every skill in `skills` not trained now that has training prompts (`trainable`:
    the skills with training tasks), since its gradient is estimated from them."""
    current = phases[phase]
    if protocol == "mixed":
        return list(current)
    if protect == "earlier":
        out: list[str] = []
        for p in phases[:phase]:
            out += [s for s in p if s not in current and s not in out]
        return out
    if protect == "others":
        return [s for s in skills if s not in current and s in trainable]
    raise ValueError(f"unknown protect rule {protect!r}; expected 'earlier' or 'others'")


def reference_value(curve: list[float]) -> float:
    """A skill's trigger reference: the best evaluation so far (0 before any)."""
    return max(curve) if curve else 0.0


def current_value(source: str, curve: list[float], memory_reward: float | None, reference: float) -> float:
    """What the trigger compares with the reference: the memory's mean reward (source "memory",
    when the skill has a memory) or the latest evaluation (else; the reference before any)."""
    if source == "memory" and memory_reward is not None:
        return memory_reward
    return curve[-1] if curve else reference


def trigger_on(reference: float, current: float, tau: float) -> bool:
    """A constraint is switched on while the skill is more than tau below its reference."""
    return (reference - current) > tau


# ----------------------------------------------------------------------------------------
# the step: projection against rows, in gradient or step space
# ----------------------------------------------------------------------------------------
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

    g: (d,) target loss gradient; G: (K, d) protected loss gradients (-grad J), both already
    averaged over ranks. space="grad" projects g and lets the optimizer step from it;
    space="step" lets the optimizer propose Delta from g, then applies -project(-Delta, G, eps).
    """
    before = flat_params(params)
    if space == "grad":
        d, pm = project_update(g, G, eps, eps_mode, solver)
        set_grads(params, d)
        opt.step()
    else:
        set_grads(params, g)
        opt.step()  # the optimizer's own step from the target gradient (moments updated)
        proposed = flat_params(params) - before
        u, pm = project_update(-proposed, G, eps, eps_mode, solver)
        set_params(params, before - u)
    return flat_params(params) - before, pm


# ----------------------------------------------------------------------------------------
# constraint rows
# ----------------------------------------------------------------------------------------
@dataclass
class Constraints:
    """Rows of the projection: G (K, d) loss gradients (rank-averaged), slack per row, owner skill
    per row, and what the diagnostics need to measure the realised change after the step."""
    G: torch.Tensor
    eps: torch.Tensor                              # (K,) float64, in units of eps_mode
    eps_mode: str
    owners: list[str]
    J_before: dict[str, float] = field(default_factory=dict)
    J_after: Callable[[str], float] | None = None  # skill -> J_s on the same rows, at the new parameters


def skill_mean_rows(layer: "SafetyLayer", policy, params, sandbox, step: int, skills: list[str]) -> Constraints:
    """One row per skill: -grad J_s of its memory surrogate on the next batch of memory prompts."""
    cfg = layer.cfg
    rows_used, G_rows, J_before = {}, [], {}
    for s in skills:  # one extra backward per protected skill
        mem = layer.memory(s)
        if mem.rollout is None or step - mem.refreshed_at >= cfg.refresh_every:
            mem.refresh(policy, sandbox, layer.sampling, seed=derive_seed(layer.seed, step, f"safety/memory/{s}"),
                        step=step)
        rows = mem.batch_rows(cfg.batch_prompts)
        for p in params:
            p.grad = None
        J = mem.surrogate(policy, rows, cfg.is_clip)
        (-J).backward()
        G_rows.append(allreduce_mean(flat_grad(params)))
        rows_used[s], J_before[s] = rows, float(J.detach())

    @torch.no_grad()
    def J_after(s: str) -> float:
        return float(layer.memories[s].surrogate(policy, rows_used[s], cfg.is_clip))

    per = cfg.eps_per_skill or {}
    eps = torch.tensor([float(per.get(s, cfg.eps)) for s in skills], dtype=torch.float64)
    return Constraints(torch.stack(G_rows), eps, cfg.eps_mode, list(skills), J_before, J_after)


# name -> builder(layer, policy, params, sandbox, step, skills) -> Constraints
CONSTRAINTS = {"skill_mean": skill_mean_rows}


# ----------------------------------------------------------------------------------------
# the layer
# ----------------------------------------------------------------------------------------
class SafetyLayer:
    """The skill-safe step with its state: memories, trigger references and switch-on events.

    cfg: SafetyConfig; train_tasks: skill -> training tasks (memories are drawn from them);
    sampling: the rollout settings of memory refreshes; seed: the run seed; constraint: a
    key of CONSTRAINTS."""

    def __init__(self, cfg, train_tasks: dict[str, list], sampling, seed: int, constraint: str = "skill_mean"):
        if constraint not in CONSTRAINTS:
            raise KeyError(f"unknown constraint {constraint!r}; expected one of {sorted(CONSTRAINTS)}")
        self.cfg, self.train_tasks, self.sampling, self.seed = cfg, train_tasks, sampling, seed
        self.build_rows = CONSTRAINTS[constraint]
        self.memories: dict[str, SkillMemory] = {}
        self.reference: dict[str, float] = {}
        self.triggered: dict[str, bool] = {}
        self.events: list[dict] = []

    def memory(self, skill: str) -> SkillMemory:
        if skill not in self.memories:
            if not self.train_tasks.get(skill):
                raise ValueError(f"safety: protected skill {skill!r} has no training tasks to build a memory from")
            self.memories[skill] = SkillMemory(skill, self.train_tasks[skill], self.cfg.memory_prompts,
                                               self.cfg.memory_samples,
                                               seed=derive_seed(self.seed, "safety/memory-prompts", skill))
        return self.memories[skill]

    def switched_on(self, protected: list[str], step: int, curves: dict[str, list[float]] | None = None) -> list[str]:
        """The protected skills whose constraint is on at this step (all of them without the trigger).

        Records a switch-on event (at step + 1, the step being taken) when a skill turns on."""
        if not self.cfg.trigger:
            return list(protected)
        curves = curves or {}
        refs, nows = {}, {}
        for s in protected:
            curve = curves.get(s) or []
            refs[s] = self.reference.setdefault(s, reference_value(curve))
            mem = self.memories.get(s)
            nows[s] = current_value(self.cfg.trigger_source, curve, mem.mean_reward if mem is not None else None,
                                    refs[s])
        # the memory reward comes from this rank's own rollouts: on when on for any rank
        votes = all_sum([float(trigger_on(refs[s], nows[s], self.cfg.tau)) for s in protected])
        out = []
        for s, vote in zip(protected, votes):
            on = vote > 0
            if on and not self.triggered.get(s):
                self.events.append({"step": step + 1, "skill": s, "reference": refs[s], "value": nows[s]})
            self.triggered[s] = on
            if on:
                out.append(s)
        return out

    def step(self, params, optimizer, policy, sandbox, step: int, protected: list[str],
             curves: dict[str, list[float]] | None = None) -> dict:
        """Apply the update from the gradient in `params`' .grad; returns safety/* metrics.

        params: the trainable parameters (their .grad: the target gradient, summed over ranks
        and clipped); policy: the model whose memories are scored (its trainable parameters are
        `params`); sandbox: the verifier of memory refreshes; step: steps done so far;
        protected: protected_skills(...) of this step; curves: skill -> evaluation history
        (the trigger's eval source)."""
        skills = self.switched_on(protected, step, curves)
        metrics: dict[str, float] = {"safety/num_protected": float(len(skills))}
        if not skills:
            optimizer.step()
            return metrics
        g = allreduce_mean(flat_grad(params))
        cons = self.build_rows(self, policy, params, sandbox, step, skills)
        for s in skills:
            if s in self.memories:
                metrics[f"safety/memory_reward/{s}"] = self.memories[s].mean_reward
        applied, pm = safe_step(params, optimizer, g, cons.G, cons.eps, cons.eps_mode, self.cfg.space, self.cfg.solver)
        metrics.update({k.replace("proj/", "safety/"): v for k, v in pm.items()})
        metrics.update(self._diagnostics(g, cons, applied))
        return metrics

    def _diagnostics(self, g: torch.Tensor, cons: Constraints, applied: torch.Tensor) -> dict:
        """Per skill (a skill with several rows: the mean of its rows, i.e. the gradient of the
        mean of its row objectives): predicted and realised change of J_s, cosines."""
        skills = list(dict.fromkeys(cons.owners))
        rows = torch.stack([cons.G[[i for i, o in enumerate(cons.owners) if o == s]].double().mean(0) for s in skills])
        out = {}
        for i, s in enumerate(skills):
            out[f"safety/predicted_dJ/{s}"] = float(-(rows[i] @ applied.double()))
            if self.cfg.measure_realised and cons.J_after is not None:
                out[f"safety/realised_dJ/{s}"] = cons.J_after(s) - cons.J_before[s]
        names = ["target"] + skills
        vecs = torch.cat([g[None].double(), rows])
        norms = vecs.norm(dim=1).clamp(min=1e-30)
        cos = (vecs @ vecs.T) / (norms[:, None] * norms[None, :])
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                out[f"safety/cos/{names[i]}~{names[j]}"] = float(cos[i, j])
        return out

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
