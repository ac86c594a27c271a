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
2. Constraint rows: the builder named by `constraint` (CONSTRAINTS, SafetyConfig.constraint)
   turns the switched-on skills into rows G (K, d) of loss gradients, a slack per row and the
   skill owning each row (a skill may own several rows):
   - "skill_mean": one row per skill, G_s = -grad J_s of its GRPO memory surrogate
     (estimates.SkillMemory, one extra forward + backward each), slack eps_s. With one
     averaged row per skill this is A-GEM's constraint, and the surrogate's gradient vanishes
     for groups whose rewards are all equal (a mastered skill gives no row).
   - "prompt_ll": GEM-style, one row per memory prompt, G_p = -grad J_p with J_p the
     log-likelihood of the skill's own verified-correct answers to prompt p
     (estimates.AnswerMemory): non-zero at pass rate 1, no sampling noise between refreshes.
     `batch_prompts` prompts per skill per step (rotating), P per-prompt gradients from one
     batched pass (a forward per bucket of rows) and one backward.
   - "prompt_ll_subspace": GPM-style, the per-skill subspace of the same per-prompt
     gradients M (P, d): its top singular directions u_k (the fewest whose energy
     sum sigma_k^2 reaches `subspace_energy` of the total, at most `subspace_max_rank`), from
     the P x P Gram matrix M M^T (never d x d), each as two rows +-sigma_k / sqrt(P) u_k (so
     |<row, Delta>| is the RMS over prompts of that component's first-order change of J_p);
     with eps = 0 the step leaves the protected subspace alone, GPM's projection.
   Slack (`budget`): "step" re-linearises every step, eps_s per row (SafetyConfig.eps /
   eps_per_skill, eps_mode). "phase" counts from the phase start (the parameters theta_0 when
   the protected set last changed): row p gets c_p = J_p(theta_t) - J_p(theta_0) + eps_s
   (absolute, J units), possibly negative, so a prompt that has lost more than eps_s gets a
   restoring step (CPO's recovery mode); J_p(theta_0) is re-measured on each refresh's answers.
   In subspace mode the skill's mean row grad mean_p J_p gets c_s = mean_p(J_p(theta_t) -
   J_p(theta_0)) + eps_s; while c_s >= 0 the two-sided subspace rows (slack eps_s) stay, and
   once c_s < 0 they are replaced by the mean row alone (recovery: restore, do not freeze the
   subspace the restoring step needs).
   Trust region (`trust_region` = delta > 0, with either prompt_ll* constraint): the KL to the
   phase-start policy on each memory prompt's answers, as a second-order model built from the
   same rows. With a_p = J_p(theta_t) - J_p(theta_0) (the measured drift, the k1 estimate of
   the token-mean KL on the stored answers) and the empirical Fisher of the answers replaced
   by its rank-one part g_p g_p^T (g_p = grad J_p, the mean answer gradient; the full empirical
   Fisher mean_a g_a g_a^T is larger, so this model is a lower bound on the curvature), the
   quadratic model around theta_0, KL_p(theta) = 1/2 (g_p . (theta - theta_0))^2, expanded at
   theta_t is

       KL_p(theta_t + Delta) ~= 1/2 a_p^2 + a_p <g_p, Delta> + 1/2 <g_p, Delta>^2
                              = 1/2 (a_p + <g_p, Delta>)^2

   (a_p in place of g_p . (theta_t - theta_0): equal to first order, and it sees curvature the
   linear estimate misses). Because the Fisher term is rank one per prompt, KL_p <= delta is
   exactly the slab -sqrt(2 delta) - a_p <= <g_p, Delta> <= sqrt(2 delta) - a_p: two linear
   rows per prompt, so the exact dual QP solves the second-order constraint without a line
   search (no approximation beyond the model). It is two-sided, like the KL it models: outside
   the region (|a_p| > sqrt(2 delta)) one row's slack is negative and the step must move J_p
   back towards its phase-start value, from either side. Why an option and not a third
   budget: it bounds a different quantity (distance from theta_0 on the memory, not loss of
   J) and composes with both budgets and both row builders; with prompt_ll the lower slab row
   is merged into the prompt's own row (the tighter slack), so a prompt has at most two rows.
   Constrained per prompt ("each"), not summed: the sum of rank-one terms is a genuine
   quadratic constraint that the linear QP cannot hold exactly.
   Reused rows (`rows_every` = k > 1): the expensive part of a builder (the memory's forward +
   backward: skill_mean's surrogate gradient, prompt_ll*'s per-prompt gradients and values) is
   computed at step c and reused for steps c .. c + k - 1 (`SafetyLayer.cached_rows`), the row
   gradients as they were at theta_c (stale by at most k - 1 steps of drift). The values: for
   prompt_ll* measured at every step with one no-grad forward over the memory's answers (the
   phase budget and the trust region are slacks on the level J_p(theta_t); moving it to first
   order, J(theta_c) + <grad J, theta_t - theta_c>, was measured to drift from the true level
   within a few steps: docs/LOG.md, session 5); for skill_mean, whose value is only the realised-
   change diagnostic, moved to first order (no forward). A memory refresh recomputes at once.
   The slacks, the projection and the diagnostics run every step; the backward (and for
   skill_mean the forward) is amortised over k steps.
   Memory refreshes (`refresh_every` = r): a memory is regenerated every r steps (generation and
   verification of every memory prompt, the step's largest extra cost), or with r = 0 once per
   phase, when the protected set changes: the answers of the phase-start policy are then what the
   phase keeps, which is the budget's theta_0 read literally.
3. Under torch.distributed g and every row are all-reduced (mean) before projecting, so every
   rank projects the same vectors and applies the same update. The per-prompt rows of prompt_ll*
   are not computed by every rank: the memories are the same on every rank (same seeds), so rank
   r runs the prompts r, r + W, ... and the rows are summed over ranks (`_split_over_ranks`);
   an answer memory's refresh is split the same way and its new answers gathered
   (AnswerMemory.refresh), so the memories stay the same on every rank. With sharded parameters (FSDP2:
   DTensors, flat vectors are each rank's local shard; parallel.py) the gradients are already
   averaged by FSDP, and the projection and the diagnostics sum their dot products over ranks
   (project.py, `sharded`); only "skill_mean" rows have a sharded form (the per-prompt
   gradients of prompt_ll* are formed from whole layer weights).
4. space="grad": d* = project(g, G, eps) is written into .grad and the optimizer steps. With SGD
   that is the guarantee; with Adam the preconditioner changes the direction afterwards (the
   cheap, approximate mode).
   space="step": the optimizer computes its step Delta from g as usual (its moments updated
   from g, so its statistics remain those of the target objective), then the parameters are
   put back and theta + Delta* is applied with -Delta* = project(-Delta, G, eps): the
   constraint <grad J_s, Delta*> >= -eps_s holds for the update actually applied.
5. Diagnostics: pairwise cosines of the gradients, active constraints (count and fraction of
   rows), ||delta - g|| / ||g||, the share of the applied step inside the span of the rows
   (||P_G Delta||^2 / ||Delta||^2) and its largest |cos| with a row, predicted first-order
   change of each J_s (<grad J_s, Delta applied>) and the realised change on the same rows
   after the step; for the answer-likelihood constraints also both on held-out memory prompts
   (`heldout_prompts`, never constrained) and, with budget "phase", the drift J_s - J_s(theta_0)
   and the budget c_s. The two that cost passes of their own, the held-out prompts' gradients and
   the realised changes (one no-grad forward after the step, `measure_realised`), are measured on
   every `diagnostics_every`-th step only; they never change the update.

Seeds: a memory's prompts and each refresh's rollouts come from seeds.derive_seed(run seed,
...) keyed by the skill (and the step), the same on every rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from retainrl.parallel import (all_sum, all_sum_tensor, allreduce_mean, flat_grad, flat_params, is_active,
                               is_sharded, mean_grad, my_share, set_grads, set_params)
from retainrl.safety.estimates import AnswerMemory, SkillMemory, values_and_grads_many, values_many
from retainrl.safety.project import project_sequential, project_with_info
from retainrl.safety.subspace import LoraSubspaces, build_subspaces
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


def resolve_act(cfg, protocol: str) -> str:
    """safety.act_subspace with "auto" decided for a run of retainrl's trainer: "both" where it
    applies (a prompt_ll* constraint, space=step, no trigger, not the mixed protocol, whose
    protected skills are the ones being trained), else "off"; other values as they are."""
    if cfg.act_subspace != "auto":
        return cfg.act_subspace
    fits = cfg.constraint != "skill_mean" and cfg.space == "step" and not cfg.trigger and protocol != "mixed"
    return "both" if fits else "off"


def one_sided_helps(cons: "Constraints", skills: list[str]) -> torch.Tensor | None:
    """(S, d): +grad J_s of every protected skill (the rows are loss gradients, -grad J), the test
    of safety.act_one_sided; None while a skill has no rows yet (then the projection stays two-sided)."""
    if not skills or any(s not in cons.row_skills() for s in skills):
        return None
    return -torch.stack([cons.skill_row(s) for s in skills])


def trigger_on(reference: float, current: float, tau: float) -> bool:
    """A constraint is switched on while the skill is more than tau below its reference."""
    return (reference - current) > tau


# ----------------------------------------------------------------------------------------
# the step: projection against rows, in gradient or step space
# ----------------------------------------------------------------------------------------
def project_update(g: torch.Tensor, G: torch.Tensor, eps: torch.Tensor | float, eps_mode: str, solver: str,
                   sharded: bool = False):
    """(projected (d,), metrics) of g against rows of G, exact or sequential (sharded: g and G are
    this rank's columns, project.py)."""
    if G.shape[0] == 0:
        return g, {"proj/num_active": 0.0, "proj/rel_change": 0.0}
    if solver == "sequential":
        if sharded:
            raise ValueError("safety.solver=sequential has no sharded (FSDP) form; use solver=exact")
        d = project_sequential(g, G, eps, eps_mode=eps_mode)
        _, info = project_with_info(d, G, eps if eps_mode == "absolute" else 0.0)
        rel = float((d - g).norm() / g.norm()) if g.norm() > 0 else 0.0
        return d, {"proj/rel_change": rel, "proj/left_violated": float((info.violation_before > 1e-9).sum())}
    d, info = project_with_info(g, G, eps, eps_mode=eps_mode, sharded=sharded)
    return d, info.metrics()


def safe_step(params, opt, g: torch.Tensor, G: torch.Tensor, eps, eps_mode: str, space: str, solver: str,
              pre: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
    """Apply one skill-safe optimizer step; returns (applied step (d,), projection metrics).

    g: (d,) target loss gradient; G: (K, d) protected loss gradients (-grad J), both already
    averaged over ranks. space="grad" projects g and lets the optimizer step from it;
    space="step" lets the optimizer propose Delta from g, then applies -project(-Delta, G, eps).
    pre (space="step" only): (Delta, theta) -> Delta' applied to the proposed step before the rows
    (the activation-subspace projection); its removed share is reported as act/removed_share.
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
        removed = None
        if pre is not None:
            kept = pre(proposed, before)
            removed = float((proposed - kept).double().pow(2).sum() / proposed.double().pow(2).sum().clamp(min=1e-300))
            proposed = kept
        u, pm = project_update(-proposed, G, eps, eps_mode, solver)
        if removed is not None:
            pm = {**pm, "proj/act/removed_share": removed}
        set_params(params, before - u)
    return flat_params(params) - before, pm


@torch.no_grad()
def step_geometry(G: torch.Tensor, step: torch.Tensor, sharded: bool = False) -> dict[str, float]:
    """How much of `step` (d,) lies in the span of the rows of G (K, d), in float64:
    protected_share = ||P_G step||^2 / ||step||^2 (P_G the orthogonal projector onto the row
    span, from the K x K Gram matrix: (G s)^T (G G^T)^+ (G s)) and max_abs_cos = max_k
    |cos(G_k, step)|; both 0 for a zero step or no rows. sharded: the columns are this rank's
    (the dot products are summed over ranks)."""
    out = {"safety/num_rows": float(G.shape[0])}
    Gd, sd = G.double(), step.double()
    gram = _gram_of(torch.cat([Gd, sd[None]]), sharded)                  # (K + 1, K + 1)
    ss = float(gram[-1, -1])
    if G.shape[0] == 0 or ss == 0:
        return {**out, "safety/protected_share": 0.0, "safety/max_abs_cos": 0.0}
    a = gram[:-1, -1]                                                     # (K,) = G step
    K = gram[:-1, :-1]
    share = float(a @ torch.linalg.pinv(K, hermitian=True, rtol=1e-12) @ a) / ss
    norms = K.diagonal().sqrt().clamp(min=1e-300)
    return {**out, "safety/protected_share": min(1.0, max(0.0, share)),
            "safety/max_abs_cos": float((a.abs() / (norms * ss ** 0.5)).max())}


def _gram_of(vecs: torch.Tensor, sharded: bool) -> torch.Tensor:
    """vecs vecs^T in float64 (the local columns' product summed over ranks when sharded)."""
    v = vecs.double()
    gram = v @ v.T
    return all_sum_tensor(gram) if sharded else gram


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
    skill_rows: dict[str, torch.Tensor] | None = None  # skill -> -grad J_s (d,) when not the mean of its rows
    heldout: dict[str, tuple[torch.Tensor, float]] = field(default_factory=dict)  # skill -> (-grad J_ho, J_ho)
    heldout_after: Callable[[str], float] | None = None
    extra: dict[str, float] = field(default_factory=dict)  # builder metrics (budgets, ranks)
    sharded: bool = False                          # G's columns are this rank's shard (FSDP2)
    after: Callable[[torch.Tensor, bool], dict[str, float]] | None = None  # (applied step, measure realised) -> metrics

    def row_skills(self) -> list[str]:
        """The skills that have a row: the builder's skill rows, else the rows' owners (in order)."""
        return list(self.skill_rows) if self.skill_rows else list(dict.fromkeys(self.owners))

    def skill_row(self, skill: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """-grad J_s (d,): the builder's skill row, else the mean of the skill's rows (cast first)."""
        if self.skill_rows:
            row = self.skill_rows[skill]
            return row if dtype is None else row.to(dtype)
        rows = self.G[[i for i, o in enumerate(self.owners) if o == skill]]
        return (rows if dtype is None else rows.to(dtype)).mean(0)


def skill_mean_rows(layer: "SafetyLayer", policy, params, sandbox, step: int, skills: list[str]) -> Constraints:
    """One row per skill: -grad J_s of its memory surrogate on the next batch of memory prompts."""
    cfg = layer.cfg
    rows_used, G_rows, J_before = {}, [], {}
    for s in skills:  # one extra backward per protected skill (every rows_every steps)
        mem = layer.refresh_if_due(policy, sandbox, step, s)

        def compute(mem=mem):
            rows = mem.batch_rows(cfg.batch_prompts)
            for p in params:
                p.grad = None
            J = mem.surrogate(policy, rows, cfg.is_clip)
            (-J).backward()
            return rows, mean_grad(flat_grad(params), params), float(J.detach())

        (rows, row, J), shift = layer.cached_rows(s, step, params, mem.refreshed_at, compute)
        if shift is not None:  # a reused row (-grad J at theta_c): J moved to now to first order
            dot = row.double() @ shift
            J -= float(all_sum_tensor(dot) if is_sharded(params) else dot)
        G_rows.append(row)
        rows_used[s], J_before[s] = rows, J

    @torch.no_grad()
    def J_after(s: str) -> float:
        return float(layer.memories[s].surrogate(policy, rows_used[s], cfg.is_clip))

    per = cfg.eps_per_skill or {}
    eps = torch.tensor([float(per.get(s, cfg.eps)) for s in skills], dtype=torch.float64)
    return Constraints(torch.stack(G_rows), eps, cfg.eps_mode, list(skills), J_before, J_after,
                       sharded=is_sharded(params))


def _eps_of(cfg, s: str) -> float:
    return float((cfg.eps_per_skill or {}).get(s, cfg.eps))


def _answer_terms(layer: "SafetyLayer", policy, params, sandbox, step: int, skills: list[str]) -> dict:
    """skill -> (memory, constraint prompts, held-out prompts, J (P + H,) float64, reward gradients
    (P + H, d) rank-averaged), or None without answers. The skills whose rows are due are computed
    in one batched pass together (estimates.values_and_grads_many); the values of reused rows in one
    no-grad pass."""
    cfg = layer.cfg
    if is_sharded(params):
        raise ValueError(f"safety.constraint={layer.constraint}: per-prompt gradients are formed from whole layer "
                         f"weights and have no sharded (FSDP) form; use constraint=skill_mean under FSDP")
    mems = {s: layer.refresh_if_due(policy, sandbox, step, s) for s in skills}
    due = {s: layer.rows_due(s, step, mems[s].refreshed_at) for s in skills}
    # no prompt of this skill has ever been answered correctly: nothing to keep (None)
    picked = {s: mems[s].next_prompts(cfg.batch_prompts) or None for s in skills if due[s]}
    has_rows = {s: picked[s] is not None if due[s] else layer.row_cache[s][3] is not None for s in skills}
    # held-out rows (never constrained, never cached) on every diagnostic step, for every skill with rows
    held = {s: mems[s].heldout_prompts() if has_rows[s] and layer.diagnosing(step) else [] for s in skills}
    jobs = [s for s in skills if (due[s] and picked[s]) or held[s]]
    computed: dict[str, tuple | None] = {s: None for s in picked}
    held_rows: dict[str, tuple] = {}
    if jobs:   # one batched pass: the due skills' constraint prompts and the held-out prompts
        lists = [(picked.get(s) or []) + held[s] for s in jobs]
        J, grads = _split_over_ranks(policy, params, [(mems[s], x) for s, x in zip(jobs, lists)])
        for s, x, j, g in zip(jobs, lists, torch.split(J, [len(x) for x in lists]),
                              torch.split(grads, [len(x) for x in lists])):
            P = len(picked.get(s) or [])
            if P:
                computed[s] = (picked[s], [], j[:P], g[:P])
            held_rows[s] = (j[P:], g[P:])
    terms = {s: layer.cached_rows(s, step, params, mems[s].refreshed_at, lambda s=s: computed[s]) for s in skills}
    # reused gradients (at theta_c), values measured now (budgets and trust need the level)
    reused = [s for s in skills if terms[s][0] is not None and terms[s][1] is not None]
    now = values_many(policy, [(mems[s], terms[s][0][0]) for s in reused])
    out = {}
    for s in skills:
        t, _ = terms[s]
        if t is None:
            out[s] = None
            continue
        prompts, _, J, grads = t
        if s in reused:
            J = now[reused.index(s)]
        if held[s]:
            J, grads = torch.cat([J, held_rows[s][0]]), torch.cat([grads, held_rows[s][1]])
        out[s] = (mems[s], prompts, held[s], J, grads)
    return out


def _split_over_ranks(policy, params, picks: list[tuple]) -> tuple[torch.Tensor, torch.Tensor]:
    """(J (N,) float64, gradients (N, d)) of every (memory, prompts) pick's prompts, in order.

    Every rank holds the same memories (same seeds), so instead of each rank running every row,
    rank r runs the prompts r, r + W, ... (parallel.my_share) in one batched pass and the rows are
    summed over ranks (each row is computed by exactly one rank: the sum is the row): 1/W of the
    pass per rank, the same rows everywhere. In a single process: one pass over everything."""
    items = [(i, p) for i, (_, prompts) in enumerate(picks) for p in prompts]
    mine = my_share(len(items))
    sub = [(m, [p for k in mine if items[k][0] == i for p in [items[k][1]]]) for i, (m, _) in enumerate(picks)]
    done = values_and_grads_many(policy, params, sub)
    if not is_active():    # one process: the pass is the result
        return torch.cat([j for j, _ in done]), torch.cat([g for _, g in done])
    d, dev = sum(q.numel() for q in params), params[0].device   # the collective's device (NCCL: the GPU)
    J = torch.zeros(len(items), dtype=torch.float64, device=dev)
    G = torch.zeros(len(items), d, dtype=torch.float32, device=dev)
    at = torch.tensor([k for i in range(len(picks)) for k in mine if items[k][0] == i], dtype=torch.long)
    if at.numel():   # positions of this rank's rows, in `done`'s order (empty parts dropped: any device)
        J[at.to(dev)] = torch.cat([j.to(dev, J.dtype) for j, _ in done if j.numel()])
        G[at.to(dev)] = torch.cat([g.to(dev, G.dtype) for _, g in done if g.numel()])
    return all_sum_tensor(J).cpu(), all_sum_tensor(G)


def _anchor_values(layer: "SafetyLayer", policy, params, s: str, prompts: list[int]) -> torch.Tensor:
    """J_p(theta_0) (len(prompts),) on the current answers, cached per refresh."""
    mem = layer.answer_memories[s]
    key = (mem.refreshed_at, layer.anchor_id)
    cached = layer.anchor_J.get(s)
    if cached is None or cached[0] != key:
        every = [p for p in range(len(mem.answers)) if mem.answers[p] is not None]
        now = flat_params(params)
        if not isinstance(layer.anchor, torch.Tensor) or layer.anchor.shape != now.shape:
            raise ValueError(f"safety: the phase-start parameters (anchor) have shape "
                             f"{tuple(getattr(layer.anchor, 'shape', ()))}, the trainable parameters "
                             f"{tuple(now.shape)}: a checkpoint of another adapter?")
        with torch.no_grad():
            set_params(params, layer.anchor)
            vals = mem.values(policy, every)
            set_params(params, now)
        cached = (key, dict(zip(every, vals.tolist())))
        layer.anchor_J[s] = cached
    return torch.tensor([cached[1][p] for p in prompts], dtype=torch.float64)


def _answer_constraints(layer: "SafetyLayer", policy, params, sandbox, step: int, skills: list[str],
                        subspace: bool) -> Constraints:
    cfg = layer.cfg
    if layer.anchor is None:  # a caller that did not mark the phase start: the first step counts
        layer.mark_phase(None, params)
    d = sum(p.numel() for p in params)
    rows, eps, owners, skill_rows, J_before, heldout, extra, used = [], [], [], {}, {}, {}, {}, {}
    trust = getattr(cfg, "trust_region", 0.0) > 0
    radius = (2 * cfg.trust_region) ** 0.5 if trust else 0.0       # |a_p + g_p . Delta| <= sqrt(2 delta)
    trusted: dict[str, tuple] = {}     # skill -> (g_p rows (P, d), a_p (P,), J_p(theta_0) (P,))
    mode = "absolute" if cfg.budget == "phase" or trust else cfg.eps_mode
    every_terms = _answer_terms(layer, policy, params, sandbox, step, skills)
    for s in skills:
        terms = every_terms[s]
        if terms is None:
            extra[f"safety/rows/{s}"] = 0.0
            continue
        mem, prompts, held, J, grads = terms
        P = len(prompts)
        M, J_now = grads[:P], J[:P]                           # reward gradients (P, d), J_p (P,)
        mean_row = -M.mean(0)
        skill_rows[s], J_before[s], used[s] = mean_row, float(J_now.mean()), (prompts, held)
        if held:
            heldout[s] = (-grads[P:].mean(0), float(J[P:].mean()))
        e_s = _eps_of(cfg, s)
        if cfg.budget == "phase" or trust:
            drift = J_now - _anchor_values(layer, policy, params, s, prompts)   # (P,) a_p
            extra[f"safety/drift/{s}"] = float(drift.mean())
        if cfg.budget == "phase":
            extra[f"safety/budget/{s}"] = float(drift.mean()) + e_s
        if trust:
            trusted[s] = (M, drift, J_now - drift)
            extra[f"safety/trust/kl_before/{s}"] = float((0.5 * drift ** 2).max())
        if not subspace:
            own = drift + e_s if cfg.budget == "phase" else torch.full((P,), e_s, dtype=torch.float64)
            rows.append(-M)
            if trust:  # the slab's lower row is the prompt's own row, with the tighter slack
                rows.append(M)
                eps += torch.minimum(own, radius + drift).tolist() + (radius - drift).tolist()
            else:
                eps += own.tolist()
            owners += [s] * (P * (2 if trust else 1))
            extra[f"safety/rows/{s}"] = float(P * (2 if trust else 1))
            continue
        if trust:  # both slab rows per prompt, besides the subspace rows
            rows += [-M, M]
            eps += (radius + drift).tolist() + (radius - drift).tolist()
            owners += [s] * (2 * P)
        if cfg.budget == "phase" and float(drift.mean()) + e_s < 0:   # recovery: the mean row alone
            rows.append(mean_row[None])
            eps.append(float(drift.mean()) + e_s)
            owners.append(s)
            extra[f"safety/rows/{s}"], extra[f"safety/recovery/{s}"] = 1.0 + 2 * P * trust, 1.0
            continue
        B = subspace_rows(M, cfg.subspace_energy, cfg.subspace_max_rank)          # (r, d)
        rows += [B, -B]
        eps += [e_s] * (2 * B.shape[0])
        owners += [s] * (2 * B.shape[0])
        if cfg.budget == "phase":
            rows.append(mean_row[None])
            eps.append(float(drift.mean()) + e_s)
            owners.append(s)
            extra[f"safety/recovery/{s}"] = 0.0
        extra[f"safety/rank/{s}"] = float(B.shape[0])
        extra[f"safety/rows/{s}"] = float(2 * B.shape[0] + (cfg.budget == "phase") + 2 * P * trust)

    mems = layer.answer_memories
    # skill -> (J_p after the step on its constraint prompts (P,), on its held-out prompts (H,)):
    # one forward over every skill's prompts, shared by the diagnostics, run on first use
    now: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def measure_after() -> None:
        if not now:
            vals = values_many(policy, [(mems[s], used[s][0] + used[s][1]) for s in used])
            for s, v in zip(used, vals):
                now[s] = (v[:len(used[s][0])], v[len(used[s][0]):])

    def values_after(s: str) -> torch.Tensor:
        measure_after()
        return now[s][0]

    def J_after(s: str) -> float:
        return float(values_after(s).mean())

    def heldout_after(s: str) -> float:
        measure_after()
        return float(now[s][1].mean())

    def after(applied: torch.Tensor, realised: bool) -> dict[str, float]:
        return _trust_diagnostics(layer.cfg, trusted, applied, values_after, realised)

    G = torch.cat(rows) if rows else torch.zeros(0, d)
    return Constraints(G, torch.tensor(eps, dtype=torch.float64), mode, owners, J_before, J_after,
                       skill_rows=skill_rows, heldout=heldout, heldout_after=heldout_after, extra=extra,
                       after=after if trusted else None)


def _trust_diagnostics(cfg, trusted: dict, applied: torch.Tensor,
                       values_after: Callable[[str], torch.Tensor], realised: bool) -> dict[str, float]:
    """Per trust-region skill: the model's KL after the step (max over prompts of
    1/2 (a_p + g_p . Delta)^2, <= delta by construction) and, with measure_realised, the
    measured one, 1/2 (J_p(theta_t + Delta) - J_p(theta_0))^2, and the fraction of prompts
    whose measured value exceeds delta (the model's error, not a solver violation)."""
    delta, out = cfg.trust_region, {}
    for s, (M, a, J0) in trusted.items():
        model = 0.5 * (a + M.double() @ applied.double()) ** 2
        out[f"safety/trust/kl_predicted/{s}"] = float(model.max())
        if realised:
            real = 0.5 * (values_after(s) - J0) ** 2
            out[f"safety/trust/kl_realised/{s}"] = float(real.max())
            out[f"safety/trust/outside_frac/{s}"] = float((real > delta * (1 + 1e-6)).double().mean())
    return out


@torch.no_grad()
def subspace_rows(M: torch.Tensor, energy: float, max_rank: int) -> torch.Tensor:
    """GPM-style basis of the rows of M (P, d): (r, d), row k = sigma_k / sqrt(P) * u_k.

    u_k are M's top right singular vectors, r the fewest whose sum of sigma_k^2 reaches
    `energy` of the total (at most max_rank; zero directions never). From the P x P Gram
    matrix: M M^T = V diag(sigma^2) V^T, sigma_k u_k = M^T v_k (float64)."""
    P = M.shape[0]
    Md = M.double()
    lam, V = torch.linalg.eigh(Md @ Md.T)                               # ascending
    lam, V = lam.flip(0).clamp(min=0), V.flip(1)
    total = float(lam.sum())
    if total <= 0:
        return torch.zeros(0, M.shape[1], dtype=M.dtype)
    keep = lam > 1e-12 * float(lam[0])
    cum = torch.cumsum(lam, 0) / total
    r = min(int((cum < energy - 1e-12).sum()) + 1, int(keep.sum()), max_rank)
    return (V[:, :r].T @ Md / P ** 0.5).to(M.dtype)


def prompt_ll_rows(layer: "SafetyLayer", policy, params, sandbox, step: int, skills: list[str]) -> Constraints:
    """One row per memory prompt (GEM): -grad J_p of the answer log-likelihood."""
    return _answer_constraints(layer, policy, params, sandbox, step, skills, subspace=False)


def prompt_ll_subspace_rows(layer: "SafetyLayer", policy, params, sandbox, step: int,
                            skills: list[str]) -> Constraints:
    """Two-sided rows on each skill's top per-prompt gradient subspace (GPM)."""
    return _answer_constraints(layer, policy, params, sandbox, step, skills, subspace=True)


# name -> builder(layer, policy, params, sandbox, step, skills) -> Constraints
CONSTRAINTS = {"skill_mean": skill_mean_rows, "prompt_ll": prompt_ll_rows,
               "prompt_ll_subspace": prompt_ll_subspace_rows}


# ----------------------------------------------------------------------------------------
# the layer
# ----------------------------------------------------------------------------------------
class SafetyLayer:
    """The skill-safe step with its state: memories, trigger references and switch-on events.

    cfg: SafetyConfig; train_tasks: skill -> training tasks (memories are drawn from them);
    sampling: the rollout settings of memory refreshes; seed: the run seed; constraint: a
    key of CONSTRAINTS."""

    def __init__(self, cfg, train_tasks: dict[str, list], sampling, seed: int, constraint: str | None = None):
        constraint = constraint or getattr(cfg, "constraint", "skill_mean")
        if constraint not in CONSTRAINTS:
            raise KeyError(f"unknown constraint {constraint!r}; expected one of {sorted(CONSTRAINTS)}")
        budget = getattr(cfg, "budget", "step")
        if budget == "phase":
            if constraint == "skill_mean":
                raise ValueError("safety.budget=phase needs a constraint with a level that can be compared across "
                                 "steps (prompt_ll or prompt_ll_subspace); the GRPO surrogate of skill_mean is 0 "
                                 "at every refresh: with safety.constraint=skill_mean set safety.budget=step")
            if cfg.eps_mode != "absolute" or cfg.space != "step":
                raise ValueError("safety.budget=phase (the default) counts J in its own units: it needs "
                                 "safety.eps_mode=absolute and safety.space=step (or set safety.budget=step)")
        if cfg.refresh_every == 0 and cfg.trigger and cfg.trigger_source == "memory":
            raise ValueError("safety.refresh_every=0 keeps a memory for the whole phase, so its reward cannot move "
                             "and safety.trigger_source=memory could never switch a constraint on: use "
                             "trigger_source=eval or refresh_every >= 1")
        if getattr(cfg, "trust_region", 0.0) > 0:
            if constraint == "skill_mean":
                raise ValueError("safety.trust_region bounds the KL on the answer memory: it needs constraint "
                                 "prompt_ll or prompt_ll_subspace")
            if cfg.eps_mode != "absolute" or cfg.space != "step":
                raise ValueError("safety.trust_region counts KL in nats per token: it needs safety.eps_mode=absolute "
                                 "and safety.space=step")
        self.cfg, self.train_tasks, self.sampling, self.seed = cfg, train_tasks, sampling, seed
        self.constraint = constraint
        self.build_rows = CONSTRAINTS[constraint]
        self.answer_memories: dict[str, AnswerMemory] = {}
        self.anchor: torch.Tensor | None = None      # theta_0: the parameters at the phase start
        self.anchor_for: tuple | None = None         # the protected set it was taken for
        self.anchor_id = 0                           # bumped at every new anchor (invalidates anchor_J)
        self.anchor_J: dict[str, tuple] = {}
        self.memories: dict[str, SkillMemory] = {}
        self.reference: dict[str, float] = {}
        self.triggered: dict[str, bool] = {}
        self.events: list[dict] = []
        self.row_cache: dict[str, tuple] = {}        # skill -> (step, memory refresh, theta_c, builder terms)
        self.refreshed_for: dict[str, tuple | None] = {}  # skill -> the protected set its memory was filled for
        self.protected_now: tuple | None = None           # the protected set of the step being taken
        act = getattr(cfg, "act_subspace", "off")  # "auto" is resolved by the trainer (resolve_act); here it is off
        if act in ("both", "input"):
            if constraint == "skill_mean" or cfg.space != "step" or cfg.trigger:
                raise ValueError("safety.act_subspace builds its subspaces from the answer memories and projects the "
                                 "optimizer's step: it needs constraint prompt_ll or prompt_ll_subspace, space=step "
                                 "and trigger=false")
        self.act_bases: dict | None = None           # module -> (U, V): the protected activation subspaces
        self.act_for: tuple | None = None            # the protected set they were built for (None: incomplete)
        self.act: LoraSubspaces | None = None        # act_bases laid out on the flat vector (derived, not saved)

    def cached_rows(self, skill: str, step: int, params, refreshed_at: int, compute: Callable[[], object]):
        """(terms, shift): `compute()`'s result for `skill`, recomputed when rows_every steps have
        passed since it was computed, the memory was refreshed since, or there is none; otherwise
        the stored one with shift = theta_t - theta_c (d,) float64 for moving its values to now
        (shift None: computed at this step)."""
        if not self.rows_due(skill, step, refreshed_at):
            hit = self.row_cache[skill]
            return hit[3], (flat_params(params) - hit[2]).double()
        terms = compute()
        if getattr(self.cfg, "rows_every", 1) > 1:
            self.row_cache[skill] = (step, refreshed_at, flat_params(params), terms)
        return terms, None

    def rows_due(self, skill: str, step: int, refreshed_at: int) -> bool:
        """Whether `cached_rows` computes `skill`'s rows at this step (else it reuses the stored ones)."""
        every = getattr(self.cfg, "rows_every", 1)
        hit = self.row_cache.get(skill)
        return not (every > 1 and hit is not None and hit[1] == refreshed_at and 0 <= step - hit[0] < every)

    def memory(self, skill: str) -> SkillMemory:
        if skill not in self.memories:
            if not self.train_tasks.get(skill):
                raise ValueError(f"safety: protected skill {skill!r} has no training tasks to build a memory from")
            self.memories[skill] = SkillMemory(skill, self.train_tasks[skill], self.cfg.memory_prompts,
                                               self.cfg.memory_samples,
                                               seed=derive_seed(self.seed, "safety/memory-prompts", skill))
        return self.memories[skill]

    def answer_memory(self, skill: str) -> AnswerMemory:
        if skill not in self.answer_memories:
            if not self.train_tasks.get(skill):
                raise ValueError(f"safety: protected skill {skill!r} has no training tasks to build a memory from")
            self.answer_memories[skill] = AnswerMemory(skill, self.train_tasks[skill], self.cfg.memory_prompts,
                                                       self.cfg.heldout_prompts, self.cfg.memory_samples,
                                                       seed=derive_seed(self.seed, "safety/answer-prompts", skill))
        return self.answer_memories[skill]

    def _constraint_memory(self, skill: str):
        """(memory, seed salt, never filled) of the memory this layer's constraint uses for `skill`:
        the GRPO rollouts of skill_mean, or the verified answers of prompt_ll*."""
        if self.constraint == "skill_mean":
            mem = self.memory(skill)
            return mem, "safety/memory", mem.rollout is None
        mem = self.answer_memory(skill)
        return mem, "safety/answers", mem.refreshed_at < 0

    def memory_due(self, step: int, skill: str) -> bool:
        """Whether `skill`'s constraint memory is empty or refresh_every steps old (refresh_every 0:
        filled for another protected set, i.e. before this phase started)."""
        mem, _, empty = self._constraint_memory(skill)
        if self.cfg.refresh_every == 0:
            return empty or self.refreshed_for.get(skill) != self.protected_now
        return empty or step - mem.refreshed_at >= self.cfg.refresh_every

    def refresh_if_due(self, policy, sandbox, step: int, skill: str):
        """`skill`'s constraint memory, regenerated first when due; one rule and one seed stream
        (derive_seed(seed, step, "<salt>/<skill>")) for every caller."""
        mem, salt, _ = self._constraint_memory(skill)
        if self.memory_due(step, skill):
            mem.refresh(policy, sandbox, self.sampling, seed=derive_seed(self.seed, step, f"{salt}/{skill}"), step=step)
            self.refreshed_for[skill] = self.protected_now
        return mem

    def mark_phase(self, protected: list[str] | None, params) -> None:
        """theta_0 <- the current parameters when the protected set changes (a phase start)."""
        key = None if protected is None else tuple(protected)
        if self.anchor is None or (key is not None and key != self.anchor_for):
            self.anchor, self.anchor_for = flat_params(params), key
            self.anchor_id += 1

    def diagnosing(self, step: int) -> bool:
        """Whether this step measures the diagnostics that cost passes of their own (held-out rows,
        realised changes): every `diagnostics_every` steps."""
        return step % max(1, getattr(self.cfg, "diagnostics_every", 1)) == 0

    def switched_on(self, protected: list[str], step: int, curves: dict[str, list[float]] | None = None) -> list[str]:
        """The protected skills whose constraint is on at this step (all of them without the trigger).

        Records a switch-on event (at step + 1, the step being taken) when a skill turns on, and
        `protected` as the step's protected set (refresh_every=0 refreshes when it changes)."""
        self.protected_now = tuple(protected)
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
        if protected and self.constraint != "skill_mean":
            self.mark_phase(protected, params)
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
            if s in self.answer_memories:
                metrics[f"safety/memory_pass/{s}"] = self.answer_memories[s].pass_rate
        pre = self._act_projection(policy, params, skills)
        helps = one_sided_helps(cons, skills) if pre is not None and getattr(self.cfg, "act_one_sided", False) else None
        if helps is not None:
            project = pre
            pre = lambda step_, theta: project(step_, theta, helps)   # noqa: E731
        applied, pm = safe_step(params, optimizer, g, cons.G, cons.eps, cons.eps_mode, self.cfg.space, self.cfg.solver,
                                pre=pre)
        metrics.update({k.replace("proj/", "safety/"): v for k, v in pm.items()})
        if pre is not None:
            metrics.update(self.act.ranks() or {"safety/act/k_in": 0.0})
            if getattr(self.cfg, "act_one_sided", False):
                metrics["safety/act/one_sided_on"] = float(helps is not None)
                metrics["safety/act/kept_whole_frac"] = (self.act.kept_whole / max(1, len(self.act.blocks))
                                                         if helps is not None else 0.0)
        if "safety/num_active" in metrics and cons.G.shape[0]:
            metrics["safety/active_frac"] = metrics["safety/num_active"] / cons.G.shape[0]
        metrics.update(self._diagnostics(g, cons, applied, self.cfg.measure_realised and self.diagnosing(step)))
        return metrics

    def _act_projection(self, policy, params, skills: list[str]):
        """The activation-subspace projection of this step (None when act_subspace is off), its bases
        built when the protected set changes, from the constraint prompts' stored answers at the
        current, phase-start parameters (a skill's memory may be up to refresh_every - 1 steps old).
        While a protected skill has no answered constraint prompt yet the bases are rebuilt at every
        step, so that a skill whose memory fills later is covered from then on."""
        mode = getattr(self.cfg, "act_subspace", "off")
        if mode not in ("both", "input"):
            return None
        if is_sharded(params):
            raise ValueError("safety.act_subspace has no sharded (FSDP) form: it projects whole LoRA factors")
        if self.act_bases is None or self.act_for != self.anchor_for:
            answers = []
            for s in skills:
                mem = self.answer_memories.get(s)
                answers.append([] if mem is None else
                               [mem.answers[p] for p in range(len(mem.tasks)) if mem.answers[p] is not None])
            self.act = build_subspaces(policy, answers, mode, self.cfg.act_energy, 1.0)
            self.act_bases = self.act.bases
            # complete only when every protected skill had answers: else built again next step
            self.act_for = self.anchor_for if all(answers) else None
        elif self.act is None:   # resumed: the checkpoint's bases, laid out on this policy's parameters
            named = policy.named_trainable()
            self.act = LoraSubspaces(list(named), [p.shape for p in named.values()], self.act_bases)
        return self.act.project

    def _diagnostics(self, g: torch.Tensor, cons: Constraints, applied: torch.Tensor, realised: bool) -> dict:
        """Per skill (the builder's skill row, else the mean of its rows, i.e. the gradient of the
        mean of its row objectives): predicted and realised change of J_s, cosines; over all
        rows: active fraction, share of the step in their span, largest |cos| with a row."""
        out = dict(cons.extra)
        out.update(step_geometry(cons.G, applied, cons.sharded))
        if cons.after is not None:
            out.update(cons.after(applied, realised))
        skills = cons.row_skills()
        if not skills:
            return out
        rows = torch.stack([cons.skill_row(s, torch.float64) for s in skills])
        # every dot product below, from one Gram matrix of [g, skill rows, applied] (summed over
        # ranks when the columns are shards)
        gram = _gram_of(torch.cat([g[None].double(), rows, applied[None].double()]), cons.sharded)
        for i, s in enumerate(skills):
            out[f"safety/predicted_dJ/{s}"] = float(-gram[1 + i, -1])
            if realised and cons.J_after is not None:
                out[f"safety/realised_dJ/{s}"] = cons.J_after(s) - cons.J_before[s]
            if s in cons.heldout:
                row, J0 = cons.heldout[s]
                out[f"safety/heldout_predicted_dJ/{s}"] = float(-(row.double() @ applied.double()))
                if realised and cons.heldout_after is not None:
                    out[f"safety/heldout_realised_dJ/{s}"] = cons.heldout_after(s) - J0
        names = ["target"] + skills
        vg = gram[:-1, :-1]
        norms = vg.diagonal().sqrt().clamp(min=1e-30)
        cos = vg / (norms[:, None] * norms[None, :])
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                out[f"safety/cos/{names[i]}~{names[j]}"] = float(cos[i, j])
        return out

    # -- checkpointing ---------------------------------------------------------------------
    # (answer memories and theta_0 are saved too; a checkpoint without them restores none)
    def state(self) -> dict:
        return {"reference": self.reference, "triggered": self.triggered, "events": self.events,
                "memories": {s: {k: getattr(m, k) for k in ("tasks", "rollout", "advantages", "behaviour", "cursor",
                                                             "refreshed_at", "mean_reward")}
                             for s, m in self.memories.items()},
                "answer_memories": {s: {k: getattr(m, k) for k in ("tasks", "heldout", "answers", "cursor",
                                                                    "refreshed_at", "pass_rate")}
                                    for s, m in self.answer_memories.items()},
                "anchor": self.anchor, "anchor_for": list(self.anchor_for) if self.anchor_for is not None else None,
                "row_cache": self.row_cache,
                "refreshed_for": {k: list(v) if v is not None else None for k, v in self.refreshed_for.items()},
                "act_bases": self.act_bases,
                "act_for": list(self.act_for) if self.act_for is not None else None}

    def load_state(self, state: dict) -> None:
        self.reference, self.triggered, self.events = state["reference"], state["triggered"], state["events"]
        for s, d in state["memories"].items():
            m = self.memory(s)
            for k, v in d.items():
                setattr(m, k, v)
        for s, d in (state.get("answer_memories") or {}).items():
            m = self.answer_memory(s)
            for k, v in d.items():
                setattr(m, k, list(v) if k in ("tasks", "heldout", "answers") else v)
        self.row_cache = dict(state.get("row_cache") or {})
        self.refreshed_for = {k: tuple(v) if v is not None else None for k, v in (state.get("refreshed_for") or {}).items()}
        bases, key = state.get("act_bases"), state.get("act_for")
        self.act_bases = {k: (v[0], v[1]) for k, v in bases.items()} if bases is not None else None
        self.act_for = tuple(key) if key is not None else None
        self.act = None   # laid out again at the next protected step, once the policy is known
        if state.get("anchor") is not None:
            self.anchor = state["anchor"]
            self.anchor_for = tuple(state["anchor_for"]) if state.get("anchor_for") is not None else None
            self.anchor_id += 1
