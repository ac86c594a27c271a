"""Activation subspaces of protected skills per LoRA layer, and the projection of a LoRA step
that leaves them alone (`safety.act_subspace`).

The coverage problem it answers (docs/LOG.md, 2026-12-01 session 6 and 2026-12-02 session 8):
per-prompt rows protect the prompts they name; a skill's other prompts drift. GPM (Saha et al.
2021) and Adam-NSCL (Wang et al. 2021) protect a task through the span of its layer *inputs*,
which generalises across the task's prompts. For LoRA (W = W0 + s B A, A (r, n_in), B (n_out, r))
protecting inputs only, dW U = 0, forces dB (A U) = 0, and A U has rank r as soon as U has r
directions: B stops learning. This module protects the block where both the protected inputs
and the protected output gradients live ("both", a hard-threshold analogue of K-FAC's Kronecker
factors E[dy dy^T] x E[x x^T], Martens & Grosse 2015):

    V^T dW U = 0 to first order, by
    dB <- dB - P_g dB Q_A,     dA <- dA - R_B dA P_x

with P_x = U U^T, P_g = V V^T, Q_A the projector onto col(A U) and R_B onto col(B^T V) (r x r, at
the current A, B). Then V^T dB' A U = 0 and V^T B dA' U = 0. The second-order term V^T dB' dA' U
= V^T dB (I - Q_A)(I - R_B) dA U vanishes only when Q_A = I or R_B = I (k_x >= r or k_g >= r with
A U, B^T V of full rank); at small energies it does not, and the step is protected to first order
only. "input" is the same with V = I (GPM on the LoRA tangent; dB is then ~0, kept as the
ablation). The map is an orthogonal projector on the flat LoRA step (idempotent, symmetric); it
removes more than the first-order feasible set needs (it ignores cancellation between dB A U and
B dA U). The row QP acts after it and may move the step back into the block (a restoring step
for a prompt over its budget), so the applied step need not satisfy V^T dW U = 0.

Bases: U (n_in, k_x) and V (n_out, k_g) per LoRA module, the top eigenvectors of the uncentered
covariances of the protected skills' answers' layer inputs x (at lora_A, non-padding positions,
each prompt's positions weighing 1 in total) and of the output gradients dy of sum_p J_p (at
lora_B; J_p the answer log-likelihood of estimates.AnswerMemory, so dy already carries J_p's
token-mean and answer weights), summed over the protected skills; k is GPM's energy
rule, the fewest eigenvectors holding >= `energy` of the trace. Built once when the protected
set changes (the phase start, the budget's theta_0) from the constraint prompts' answers, never
the held-out ones (so their drift stays a test of coverage).
"""

from __future__ import annotations

import torch

from retainrl.parallel import all_sum_tensor, is_active, my_share
from retainrl.safety.estimates import LayerCalls, _answer_loglik


def lora_modules(model) -> dict[str, tuple]:
    """name -> (lora_A Linear, lora_B Linear) of every LoRA-wrapped layer of a peft model (adapter
    "default")."""
    out = {}
    for name, m in model.named_modules():
        A, B = getattr(m, "lora_A", None), getattr(m, "lora_B", None)
        if isinstance(A, torch.nn.ModuleDict) and isinstance(B, torch.nn.ModuleDict) and "default" in A:
            out[name] = (A["default"], B["default"])
    return out


def covariances(policy, answers: list, mods: dict[str, tuple]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """name -> (C_x (n_in, n_in), C_g (n_out, n_out)) float64 over `answers` (one Rollout per
    prompt): sum over non-padding positions of x x^T (each prompt weighing 1, its distinct rows by
    count) and of dy dy^T, dy the gradient of sum_p J_p at lora_B's output. Runs one forward per bucket
    of rows (estimates.pack_rows) and one backward; leaves the parameters' .grad as it found them."""
    leaves = [B.weight for _, B in mods.values()]
    with LayerCalls({k: A for k, (A, _) in mods.items()}, {k: B for k, (_, B) in mods.items()}) as rec:
        J, owner, weight, packed = _answer_loglik(policy, answers)
        rec.stop()
        if not rec.complete(len(packed.buckets)):   # inputs and output gradients cannot be paired with the calls
            raise ValueError(f"act_subspace: a LoRA module did not run once per forward call ({len(packed.buckets)} "
                             f"calls; a layer used twice per forward, not at all, or inside reentrant checkpointing)")
        torch.autograd.grad(J.sum(), leaves, allow_unused=True)  # fires the output hooks; no .grad written
    xs, gs = rec.x, rec.dy
    per_prompt = torch.zeros(len(answers), dtype=weight.dtype, device=weight.device).index_add(0, owner, weight)
    row_w = (weight / per_prompt[owner]).double()       # each prompt's rows weigh 1 in total, by count
    out = {}
    for name in mods:
        n_out = mods[name][1].weight.shape[0]
        C_x, C_g, at = 0.0, 0.0, 0
        for i, (x, (_, mask, _)) in enumerate(zip(xs[name], packed.buckets, strict=True)):
            n = mask.shape[0]
            w = (mask.double().to(x.device) * row_w[at:at + n, None].to(x.device)).reshape(-1)   # position weights
            at += n
            x = x.double().reshape(-1, x.shape[-1])
            g = gs[name][i].double().reshape(-1, n_out) if i in gs[name] else \
                torch.zeros(x.shape[0], n_out, dtype=torch.float64, device=x.device)
            C_x, C_g = C_x + (x * w[:, None]).T @ x, C_g + g.T @ g
        out[name] = (C_x, C_g)
    return out


def basis(C: torch.Tensor, energy: float, max_frac: float = 1.0) -> torch.Tensor:
    """(n, k): the fewest top eigenvectors of the PSD matrix C (n, n) holding >= `energy` of its
    trace (GPM's criterion), k <= max(1, max_frac * n); float64."""
    vals, vecs = torch.linalg.eigh(C.double())
    vals, vecs = vals.flip(0).clamp(min=0), vecs.flip(1)
    if float(vals.sum()) <= 0:
        return vecs[:, :0]
    frac = vals.cumsum(0) / vals.sum()
    k = int((frac < energy - 1e-12).sum()) + 1
    return vecs[:, :min(k, max(1, int(max_frac * C.shape[0])))]


def col_projector(M: torch.Tensor, rtol: float = 1e-6) -> torch.Tensor:
    """(r, r) orthogonal projector onto the column space of M (r, k); 0 for an empty or zero M."""
    r = M.shape[0]
    if M.numel() == 0:
        return torch.zeros(r, r, dtype=M.dtype, device=M.device)
    U, s, _ = torch.linalg.svd(M, full_matrices=False)
    if float(s.max()) == 0:
        return torch.zeros(r, r, dtype=M.dtype, device=M.device)
    keep = U[:, s > rtol * s.max()]
    return keep @ keep.T


def project_lora(dA: torch.Tensor, dB: torch.Tensor, A: torch.Tensor, B: torch.Tensor, U: torch.Tensor,
                 V: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The step (dA (r, n_in), dB (n_out, r)) at (A, B) with V^T dW U = 0 to first order (V None:
    dW U = 0, i.e. V = I); float64 in, float64 out."""
    Px = U @ U.T
    Q_A = col_projector(A @ U)
    if V is None:
        return dA - col_projector(B.T) @ dA @ Px, dB - dB @ Q_A
    return dA - col_projector(B.T @ V) @ dA @ Px, dB - (V @ V.T) @ dB @ Q_A


class LoraSubspaces:
    """The protected bases of every LoRA module, laid out on the flat trainable vector.

    names: the trainable parameters' names in flat order (Policy.named_trainable); numels their
    sizes; bases: module name -> (U, V or None). A module's A and B are found by peft's names
    "<module>.lora_A.default.weight" / "...lora_B...". Parameters of no module (a value head) pass
    unchanged."""

    def __init__(self, names: list[str], shapes: list[torch.Size], bases: dict[str, tuple]):
        offsets, at = {}, 0
        for n, shp in zip(names, shapes):
            offsets[n] = (at, shp)
            at += int(torch.Size(shp).numel())
        self.blocks = []
        for mod, (U, V) in bases.items():
            a, b = offsets[f"{mod}.lora_A.default.weight"], offsets[f"{mod}.lora_B.default.weight"]
            self.blocks.append((a, b, U, V))
        self.bases = bases
        self.kept_whole = 0   # modules kept whole by the last one-sided projection

    @torch.no_grad()
    def project(self, step: torch.Tensor, params: torch.Tensor, helps: torch.Tensor | None = None) -> torch.Tensor:
        """step (d,) proposed at flat parameters `params` (d,) -> the projected step (d,).

        helps (S, d), optional: one row per protected skill, the gradient of its objective (+grad J_s).
        One-sided: a module whose removed part r has helps[:, module] @ r >= 0 for every skill keeps
        its step whole (what the subspace would remove raises every protected J_s to first order)."""
        out = step.clone()
        self.kept_whole = 0
        h = helps.double() if helps is not None else None
        for (a0, ashp), (b0, bshp), U, V in self.blocks:
            na, nb = int(torch.Size(ashp).numel()), int(torch.Size(bshp).numel())
            A, B = params[a0:a0 + na].view(ashp).double(), params[b0:b0 + nb].view(bshp).double()
            dA, dB = step[a0:a0 + na].view(ashp).double(), step[b0:b0 + nb].view(bshp).double()
            U_, V_ = U.to(A.device), (V.to(A.device) if V is not None else None)
            pA, pB = project_lora(dA, dB, A, B, U_, V_)
            if h is not None:
                rA, rB = (dA - pA).reshape(-1), (dB - pB).reshape(-1)
                gain = h[:, a0:a0 + na] @ rA + h[:, b0:b0 + nb] @ rB   # (S,)
                if bool((gain >= 0).all()):
                    # counted only where the projection would have removed something
                    self.kept_whole += int(bool(rA.abs().sum() + rB.abs().sum() > 0))
                    continue
            out[a0:a0 + na] = pA.reshape(-1).to(out.dtype)
            out[b0:b0 + nb] = pB.reshape(-1).to(out.dtype)
        return out

    def ranks(self) -> dict[str, float]:
        """Mean k_x and k_g over the modules (metrics)."""
        if not self.bases:
            return {}
        kx = [U.shape[1] for U, _ in self.bases.values()]
        kg = [V.shape[1] for _, V in self.bases.values() if V is not None]
        out = {"safety/act/k_in": sum(kx) / len(kx)}
        if kg:
            out["safety/act/k_out"] = sum(kg) / len(kg)
        return out


def build_subspaces(policy, answers: list, mode: str, energy: float, max_frac: float) -> LoraSubspaces:
    """LoraSubspaces of `answers` (the protected skills' constraint prompts' answers, a list per
    skill of one Rollout per prompt) at the policy's current parameters; mode "both" or "input".

    Under torch.distributed the prompts are split over the ranks (parallel.my_share) and the
    covariances summed (all_sum_tensor), so every rank takes the eigenvectors of the same matrices
    (a backward is not bitwise reproducible across GPUs, and eigenvectors of near-equal
    eigenvalues would differ) at 1/W of the pass each."""
    mods = lora_modules(policy.model)
    if not mods:
        raise ValueError("safety.act_subspace needs a LoRA (peft) model: no lora_A / lora_B modules found")
    C: dict[str, list] = {}
    for per_skill in answers:
        if not per_skill:
            continue
        mine = [per_skill[i] for i in my_share(len(per_skill))] if is_active() else per_skill
        part = covariances(policy, mine, mods) if mine else None
        for name, (A, B) in mods.items():
            cx, cg = part[name] if part is not None else (
                torch.zeros(A.weight.shape[1], A.weight.shape[1], dtype=torch.float64, device=A.weight.device),
                torch.zeros(B.weight.shape[0], B.weight.shape[0], dtype=torch.float64, device=B.weight.device))
            if is_active():
                cx, cg = all_sum_tensor(cx), all_sum_tensor(cg)
            if name in C:
                C[name][0] += cx
                C[name][1] += cg
            else:
                C[name] = [cx, cg]
    bases = {name: (basis(cx, energy, max_frac), basis(cg, energy, max_frac) if mode == "both" else None)
             for name, (cx, cg) in C.items()}
    named = policy.named_trainable()
    return LoraSubspaces(list(named), [p.shape for p in named.values()], bases)
