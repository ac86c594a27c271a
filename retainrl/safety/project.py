"""Skill-safe projection of an update direction: the project's core maths.

The problem (a Euclidean projection onto a polyhedron):

    delta* = argmin_delta  1/2 ||delta - g||^2   s.t.   <g_s, delta> >= -eps_s,   s = 1..S

g (d,) is the proposed update, the rows g_s of G (S, d) are the protected skills' gradients and
eps_s is the slack each skill grants (absolute slacks may be negative: see "Negative slack"). g and the rows of G must share one sign convention:
both gradients of losses (then the step is theta <- theta - lr * delta) or both of rewards (then
theta <- theta + lr * delta). Either way <g_s, delta> is skill s's first-order improvement per
unit step, and the constraint lets it worsen by at most eps_s (eps_s = 0: no first-order harm).

Dual (derived here, checked by the tests). With multipliers lam >= 0 for the constraints
G delta + eps >= 0, the Lagrangian is L = 1/2 ||delta - g||^2 - lam^T (G delta + eps);
dL/ddelta = 0 gives

    delta = g + G^T lam                                                      (stationarity)

and substituting back, maximising the dual function is the non-negative QP

    min_{lam >= 0}  q(lam) = 1/2 lam^T K lam + lam^T c,    K = G G^T (S, S),  c = G g + eps.

Its KKT conditions are a linear complementarity problem: lam >= 0, w = K lam + c >= 0,
lam_s w_s = 0, where w_s = <g_s, delta> + eps_s is exactly constraint s's slack at delta. So
only the S x S Gram matrix K and the S-vector G g are ever needed; nothing d x d is formed,
and d (millions) is touched only in two streaming passes (Gram, then delta = g + G^T lam),
both accumulated in float64 over column chunks. delta is unique even when K is singular
(duplicated, parallel or zero rows): every optimal lam gives the same G^T lam.

Negative slack (a budget counted from an earlier point, CPO's recovery mode): eps_s < 0 asks
for a first-order *improvement* <g_s, delta> >= |eps_s|, so a skill that has already lost more
than its budget gets a restoring step. Nothing above assumes eps >= 0 except that delta = 0 is
feasible; the LCP still characterises the optimum whenever the constraints are jointly feasible
(the primal is strictly convex, so KKT holds and a basic optimal lam exists), so enumeration
stays exact and the tolerances are relative to max(||g||, the slack scale) (g may be 0 and
still infeasible). Two cases have no solution and are not errors (training must go on):
a zero row with eps_s < 0 (no direction restores it to first order) is dropped like any zero
row, and jointly infeasible constraints (e.g. opposite rows both asking for improvement) give
the candidate of smallest KKT residual; `project_with_info` reports both through
violation_after and kkt_residual. Negative slack is absolute only (mode "relative" is a cosine
bound and stays >= 0).

Solver (`project`):
  * Feasible g (c >= 0 in float64): g is returned unchanged (a clone, bit-for-bit equal).
  * Rows that cannot bind are dropped first: zero rows (0 >= -eps_s always holds) and rows
    with eps_s = inf. The rest is rescaled to unit rows and a unit-norm g, so K has a unit
    diagonal (a cosine matrix) and tolerances are relative.
  * S <= 8 (`max_exact`): exact active-set enumeration. For each of the 2^S - 1 active sets
    A, solve K_AA lam_A = -c_A by least squares (pseudo-inverse, batched over the sets of one
    size; rank-deficient K_AA from duplicated or nearly parallel skills is fine), clip to
    lam >= 0, and score the candidate by
    the LCP natural residual max_s |min(lam_s, w_s)| (zero iff KKT holds). The best candidate
    is taken (ties: the smaller active set). Some active set with linearly independent rows
    solves the LCP exactly (a basic optimal lam exists), so the winner is exact to float64
    rounding. 255 tiny solves: a few milliseconds, independent of d.
  * S > 8: Hildreth's method, i.e. cyclic exact coordinate descent on the dual
    (lam_s <- max(0, lam_s - w_s / K_ss), each step satisfies constraint s exactly or frees it),
    and every 10 sweeps an exact least-squares re-solve on the current support, accepted when
    its KKT residual is below `tol`. It stops at residual <= tol (default 1e-12, relative
    units) or after `max_iter` sweeps (then the best iterate is returned; `project_with_info`
    reports the residual). Linear convergence; the re-solve makes it terminate exactly once
    the active set is identified.
  * When the true answer is delta = 0 (-g in the cone of the active rows with eps = 0), the
    float64 combination g + G^T lam cancels only to rounding; a result within 1e-12 of the
    scale ||g|| + sum_s lam_s ||g_s|| is returned as exact zeros.
  * The output has g's dtype and device. A float32 result is the float64 answer rounded, so an
    active constraint can read as violated by float32 rounding (~1e-7 relative), no more.

Variants:
  * `project_sequential`: one constraint at a time in a fixed order, each an A-GEM-style
    projection onto the half-space of one skill (A-GEM projects onto one averaged constraint;
    this visits every skill once). Cheap and exact per step, but a later step can break an
    earlier constraint; `constraint_violations` reports what is left. See the test module for
    measured violation rates.
  * `resolve_eps(..., mode="relative")`: eps_s = rel_s * ||g|| * ||g_s||, i.e. a slack on the
    cosine: cos(g_s, delta) * ||delta|| / ||g|| >= -rel_s.
  * `project_with_info`: the projection plus diagnostics (multipliers, active set, constraint
    values before and after, relative change, cosines).

Cost: two float64 passes over G (three with `project_with_info`) plus a d-independent solve;
measured on one H100, d = 5e7 float32, S = 8: 24 ms per `project`, peak extra memory one
float64 chunk (S x 2^20). CPU and CUDA results agree to 1e-11 relative.

Sharded vectors (`sharded=True`, FSDP2): g and G are this rank's shards of vectors split over
the ranks of the default process group (the same columns of each). Every pass over d is a sum,
so each rank sums its own columns and the S x S Gram matrix, G g, <g, g>, ||delta||^2 and G delta
are all-reduced (one small all-reduce each); the d-independent solve then runs identically on
every rank and each rank forms its own columns of delta = g + G^T lam. Nothing of size d
crosses ranks. `project_sequential` has no sharded form.

Not differentiable (runs under no_grad): its inputs are gradients. float64 is required on the
device of g (CUDA and CPU have it; MPS does not).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass

import numpy as np
import torch

from retainrl.parallel import all_sum_tensor

MAX_EXACT = 8          # largest S solved by active-set enumeration
_CHUNK = 1 << 20       # columns per float64 block in the streaming passes over d
_RCOND = 1e-12         # relative singular-value cutoff of the active-set least-squares solves
_ZERO_TOL = 1e-12      # |delta| below this fraction of its terms' scale is returned as exact 0
_RESOLVE_EVERY = 10    # Hildreth sweeps between exact re-solves on the support

EPS_MODES = ("absolute", "relative")


# ---------------------------------------------------------------------------------------------
# Inputs and the streaming passes over d


def _check_inputs(g: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Validate shapes; return G as (S, d) (a 1-D G is one constraint)."""
    if not isinstance(g, torch.Tensor) or not isinstance(G, torch.Tensor):
        raise TypeError("g and G must be torch tensors")
    if g.dim() != 1:
        raise ValueError(f"g must be 1-D (d,), got shape {tuple(g.shape)}")
    if G.dim() == 1:
        G = G.unsqueeze(0)
    if G.dim() != 2 or G.shape[1] != g.shape[0]:
        raise ValueError(f"G must be (S, d) with d = {g.shape[0]}, got shape {tuple(G.shape)}")
    if not (g.is_floating_point() and G.is_floating_point()):
        raise TypeError("g and G must be floating point")
    return G


def _gram(g: torch.Tensor, G: torch.Tensor, sharded: bool = False) -> tuple[np.ndarray, np.ndarray, float]:
    """K = G G^T (S, S), b = G g (S,), <g, g>; float64, streamed over column chunks of d (and
    summed over ranks when the columns are sharded)."""
    S, d = G.shape
    K = torch.zeros(S, S, dtype=torch.float64, device=g.device)
    b = torch.zeros(S, dtype=torch.float64, device=g.device)
    gg = torch.zeros((), dtype=torch.float64, device=g.device)
    for i in range(0, d, _CHUNK):
        Gc = G[:, i:i + _CHUNK].to(device=g.device, dtype=torch.float64)  # (S, chunk)
        gc = g[i:i + _CHUNK].to(torch.float64)                           # (chunk,)
        K += Gc @ Gc.T
        b += Gc @ gc
        gg += gc @ gc
    if sharded:
        S = K.shape[0]
        total = all_sum_tensor(torch.cat([K.reshape(-1), b, gg[None]]))
        K, b, gg = total[:S * S].reshape(S, S), total[S * S:S * S + S], total[-1]
    K, b, gg = K.cpu().numpy(), b.cpu().numpy(), float(gg)
    K = 0.5 * (K + K.T)                    # gemm need not return an exactly symmetric product
    if not (np.isfinite(K).all() and np.isfinite(b).all() and np.isfinite(gg)):
        raise ValueError("g and G must be finite")
    return K, b, gg


def _combine(g: torch.Tensor, G: torch.Tensor, lam: np.ndarray, sharded: bool = False) -> tuple[torch.Tensor, float]:
    """delta = g + G^T lam (d,) in g's dtype, accumulated in float64; also ||delta|| (float64)."""
    lam_t = torch.as_tensor(lam, dtype=torch.float64, device=g.device)  # (S,)
    out = torch.empty_like(g)
    sq = torch.zeros((), dtype=torch.float64, device=g.device)
    for i in range(0, g.shape[0], _CHUNK):
        Gc = G[:, i:i + _CHUNK].to(device=g.device, dtype=torch.float64)
        chunk = g[i:i + _CHUNK].to(torch.float64) + lam_t @ Gc         # (chunk,)
        sq += chunk @ chunk
        out[i:i + _CHUNK] = chunk.to(g.dtype)
    if sharded:
        sq = all_sum_tensor(sq)
    return out, float(sq) ** 0.5


def _dots(G: torch.Tensor, x: torch.Tensor, sharded: bool = False) -> np.ndarray:
    """G x (S,) in float64, streamed over d (summed over ranks when sharded)."""
    acc = torch.zeros(G.shape[0], dtype=torch.float64, device=x.device)
    for i in range(0, x.shape[0], _CHUNK):
        acc += G[:, i:i + _CHUNK].to(device=x.device, dtype=torch.float64) @ x[i:i + _CHUNK].to(torch.float64)
    return (all_sum_tensor(acc) if sharded else acc).cpu().numpy()


def _eps_vector(eps, S: int, mode: str, g_norm: float, row_norms: np.ndarray) -> np.ndarray:
    """eps as a float64 (S,) array of absolute slacks."""
    if mode not in EPS_MODES:
        raise ValueError(f"unknown eps_mode {mode!r}; expected one of {EPS_MODES}")
    if isinstance(eps, torch.Tensor):
        eps = eps.detach().to("cpu", torch.float64).numpy()
    e = np.broadcast_to(np.asarray(eps, dtype=np.float64), (S,)).copy()
    if np.isnan(e).any() or (e == -np.inf).any():
        raise ValueError(f"eps must be a number or +inf (no NaN, no -inf), got {e.tolist()}")
    if mode == "relative" and (e < 0).any():
        raise ValueError(f"relative eps must be >= 0 (negative slack is absolute only), got {e.tolist()}")
    if mode == "relative":
        with np.errstate(invalid="ignore"):  # inf * 0 (a zero row) is an unconstrained row
            e = np.where(row_norms == 0, np.inf, e * g_norm * row_norms)
        e[np.isnan(e)] = np.inf  # rel = inf with g = 0: unconstrained, as rel = inf means
    return e


def resolve_eps(g: torch.Tensor, G: torch.Tensor, eps=0.0, mode: str = "absolute") -> torch.Tensor:
    """Absolute per-skill slacks (S,) float64 on g's device.

    g: (d,), G: (S, d), eps: float or (S,), all >= 0.
    mode "absolute": eps_s as given (broadcast). mode "relative": eps_s = rel_s * ||g|| * ||g_s||
    (rel_s = eps), so the constraint reads cos(g_s, delta) * ||delta|| >= -rel_s * ||g||; a zero
    row gets eps_s = inf (it constrains nothing).
    """
    G = _check_inputs(g, G)
    g_norm = float(torch.linalg.vector_norm(g, dtype=torch.float64))
    row_norms = torch.linalg.vector_norm(G, dim=1, dtype=torch.float64).cpu().numpy()
    e = _eps_vector(eps, G.shape[0], mode, g_norm, row_norms)
    return torch.as_tensor(e, dtype=torch.float64, device=g.device)


# ---------------------------------------------------------------------------------------------
# The S x S dual: min_{lam >= 0} 1/2 lam^T K lam + lam^T c


def _residual(lam: np.ndarray, w: np.ndarray) -> float:
    """LCP natural residual max_s |min(lam_s, w_s)|: zero iff lam >= 0, w >= 0, lam_s w_s = 0."""
    return float(np.abs(np.minimum(lam, w)).max()) if lam.size else 0.0


def _solve_on(K: np.ndarray, c: np.ndarray, idx: list[int]) -> np.ndarray:
    """lam (S,) with lam_A = max(0, lstsq(K_AA, -c_A)) on A = idx and zero elsewhere."""
    lam = np.zeros(c.shape[0])
    if idx:
        sol = np.linalg.lstsq(K[np.ix_(idx, idx)], -c[idx], rcond=_RCOND)[0]
        lam[idx] = np.maximum(sol, 0.0)
    return lam


@functools.lru_cache(maxsize=None)
def _subsets(S: int, k: int) -> np.ndarray:
    """All k-subsets of range(S), lexicographic: (C(S, k), k) int."""
    return np.array(list(itertools.combinations(range(S), k)), dtype=np.intp).reshape(-1, k)


def _solve_enumerate(K: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, float, int]:
    """Exact dual solve by trying every active set; returns (lam, residual, sets tried).

    Vectorised per set size: one batched pseudo-inverse of the C(S, k) principal k x k blocks.
    The smallest residual wins; ties go to the smaller, then lexicographically first, set.
    """
    S = c.shape[0]
    best, best_r, tried = np.zeros(S), _residual(np.zeros(S), c), 1
    for k in range(1, S + 1):
        idx = _subsets(S, k)                                               # (C, k)
        blocks = K[idx[:, :, None], idx[:, None, :]]                       # (C, k, k)
        sol = -(np.linalg.pinv(blocks, rcond=_RCOND) @ c[idx][:, :, None])[..., 0]
        lam = np.zeros((idx.shape[0], S))
        np.put_along_axis(lam, idx, np.maximum(sol, 0.0), axis=1)          # (C, S), >= 0
        r = np.abs(np.minimum(lam, lam @ K + c)).max(axis=1)               # K is symmetric
        j = int(np.argmin(r))
        tried += idx.shape[0]
        if r[j] < best_r:
            best, best_r = lam[j], float(r[j])
    return best, best_r, tried


def _solve_hildreth(K: np.ndarray, c: np.ndarray, tol: float, max_iter: int) -> tuple[np.ndarray, float, int]:
    """Cyclic coordinate descent on the dual (Hildreth) with periodic exact support re-solves."""
    S = c.shape[0]
    lam, w = np.zeros(S), c.copy()  # w = K lam + c
    best, best_r = lam.copy(), _residual(lam, w)
    for sweep in range(1, max_iter + 1):
        for s in range(S):
            new = max(0.0, lam[s] - w[s] / K[s, s])
            if new != lam[s]:
                w += (new - lam[s]) * K[:, s]
                lam[s] = new
        r = _residual(lam, w)
        if r < best_r:
            best, best_r = lam.copy(), r
        if sweep % _RESOLVE_EVERY == 0 or r <= tol:
            cand = _solve_on(K, c, list(np.flatnonzero(lam > 0)))
            rc = _residual(cand, K @ cand + c)
            if rc < best_r:
                best, best_r = cand, rc
        if best_r <= tol:
            return best, best_r, sweep
    return best, best_r, max_iter


@dataclass
class _Solution:
    """What the solver found, in the caller's units: delta = g + G^T lam."""

    delta: torch.Tensor
    lam: np.ndarray        # (S,) float64
    eps: np.ndarray        # (S,) float64, absolute
    b: np.ndarray          # (S,) G g
    K: np.ndarray          # (S, S) G G^T
    gg: float
    solver: str
    iterations: int
    residual: float        # KKT residual of the normalised dual


@torch.no_grad()
def _project(g, G, eps, eps_mode, max_exact, tol, max_iter, sharded=False) -> _Solution:
    G = _check_inputs(g, G)
    S = G.shape[0]
    K, b, gg = _gram(g, G, sharded)
    norms = np.sqrt(np.diag(K).clip(min=0.0))                        # (S,)
    e = _eps_vector(eps, S, eps_mode, gg ** 0.5, norms)
    if S == 0 or np.all(b + e >= 0):
        return _Solution(g.clone(), np.zeros(S), e, b, K, gg, "feasible", 0, 0.0)
    keep = np.flatnonzero((norms > 0) & np.isfinite(e))               # rows that can bind
    if keep.size == 0:  # only zero rows with negative slack are violated: nothing can restore them
        return _Solution(g.clone(), np.zeros(S), e, b, K, gg, "unbindable", 0, 0.0)
    n = norms[keep]
    # the scale of the normalised problem: ||g||, or (g = 0 with negative slack) the largest
    # slack distance |eps_s| / ||g_s||, so that tolerances stay relative
    gn = gg ** 0.5 if gg > 0 else float(np.max(np.abs(e[keep]) / n, initial=0.0)) or 1.0
    Kn = K[np.ix_(keep, keep)] / np.outer(n, n)                        # unit diagonal
    np.fill_diagonal(Kn, 1.0)
    cn = (b[keep] + e[keep]) / (n * gn)
    if keep.size <= max_exact:
        mu, r, it = _solve_enumerate(Kn, cn)
        solver = "enumeration"
    else:
        mu, r, it = _solve_hildreth(Kn, cn, tol, max_iter)
        solver = "hildreth"
    lam = np.zeros(S)
    lam[keep] = mu * gn / n                                            # back to caller units
    delta, delta_norm = _combine(g, G, lam, sharded)
    if delta_norm <= _ZERO_TOL * (gn + float(np.sum(lam * norms))):
        delta.zero_()                                                  # exact answer is 0
    return _Solution(delta, lam, e, b, K, gg, solver, it, r)


def project(g: torch.Tensor, G: torch.Tensor, eps=0.0, *, eps_mode: str = "absolute",
            max_exact: int = MAX_EXACT, tol: float = 1e-12, max_iter: int = 10_000,
            sharded: bool = False) -> torch.Tensor:
    """Minimum-change update that harms no protected skill beyond its slack.

    g: (d,) proposed update. G: (S, d) protected skills' gradients (same sign convention as g).
    eps: float or (S,): slack per skill, absolute (may be negative: then skill s must improve
         by at least -eps_s) or (eps_mode="relative", >= 0) rel_s as in `resolve_eps`.
         eps_s = inf disables constraint s.
    max_exact: largest number of binding-capable constraints solved by exact enumeration;
         above it the Hildreth solver runs to KKT residual `tol` (relative units) or `max_iter`
         sweeps.
    sharded: g and G are this rank's columns of vectors split over the ranks (module docstring);
         the result is this rank's columns of delta.
    Returns delta (d,), g's dtype and device:
        argmin ||delta - g||^2  s.t.  <g_s, delta> >= -eps_s  for all s.
    g itself (cloned, bit-for-bit) when it is already feasible.
    """
    return _project(g, G, eps, eps_mode, max_exact, tol, max_iter, sharded).delta


# ---------------------------------------------------------------------------------------------
# Diagnostics


@dataclass
class ProjectionInfo:
    """Diagnostics of one projection; tensors are float64 on the CPU, shapes (S,) or (S, S).

    lam:       multipliers, delta = g + G^T lam; lam >= 0.
    active:    lam > 0 (bool).
    eps:       absolute slacks used.
    before:    <g_s, g>;  after: <g_s, delta> measured on the returned delta.
    violation_before / violation_after: max(0, -eps_s - before_s) / (-eps_s - after_s).
    rel_change: ||delta - g|| / ||g|| (0 when g = 0).
    cos_G:     pairwise cosines of the rows of G (0 for a zero row); cos_g: cos(g_s, g).
    solver:    "feasible" | "enumeration" | "hildreth" | "unbindable" (only zero rows violated);
               iterations: active sets tried or sweeps.
    kkt_residual: max_s |min(lam_s, w_s)| of the normalised dual (unit rows, unit g).
    """

    lam: torch.Tensor
    active: torch.Tensor
    eps: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor
    violation_before: torch.Tensor
    violation_after: torch.Tensor
    rel_change: float
    cos_G: torch.Tensor
    cos_g: torch.Tensor
    solver: str
    iterations: int
    kkt_residual: float

    def metrics(self, names: list[str] | None = None) -> dict[str, float]:
        """Flat, namespaced floats for a logger; per-skill keys use `names` (default s0, s1...)."""
        names = names or [f"s{i}" for i in range(self.lam.shape[0])]
        out = {
            "proj/num_active": float(self.active.sum()),
            "proj/rel_change": self.rel_change,
            "proj/max_violation_before": float(self.violation_before.max()) if len(names) else 0.0,
            "proj/max_violation_after": float(self.violation_after.max()) if len(names) else 0.0,
            "proj/kkt_residual": self.kkt_residual,
        }
        for i, name in enumerate(names):
            out[f"proj/lam/{name}"] = float(self.lam[i])
            out[f"proj/cos_g/{name}"] = float(self.cos_g[i])
            out[f"proj/after/{name}"] = float(self.after[i])
        return out


def _cosines(K: np.ndarray, b: np.ndarray, gg: float) -> tuple[np.ndarray, np.ndarray]:
    norms = np.sqrt(np.diag(K).clip(min=0.0))
    safe = np.where(norms > 0, norms, 1.0)
    cos_G = K / np.outer(safe, safe) * np.outer(norms > 0, norms > 0)
    cos_g = b / (safe * gg ** 0.5) if gg > 0 else np.zeros_like(b)
    return cos_G, cos_g * (norms > 0)


@torch.no_grad()
def project_with_info(g: torch.Tensor, G: torch.Tensor, eps=0.0, *, eps_mode: str = "absolute",
                      max_exact: int = MAX_EXACT, tol: float = 1e-12, max_iter: int = 10_000,
                      sharded: bool = False) -> tuple[torch.Tensor, ProjectionInfo]:
    """`project` plus diagnostics: returns (delta (d,), ProjectionInfo). One extra pass over d."""
    G = _check_inputs(g, G)
    sol = _project(g, G, eps, eps_mode, max_exact, tol, max_iter, sharded)
    after = _dots(G, sol.delta, sharded)
    diff = torch.linalg.vector_norm(sol.delta.to(torch.float64) - g.to(torch.float64))
    if sharded:
        diff = all_sum_tensor(diff.square()) ** 0.5
    rel = float(diff) / sol.gg ** 0.5 if sol.gg > 0 else 0.0
    cos_G, cos_g = _cosines(sol.K, sol.b, sol.gg)
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    with np.errstate(invalid="ignore"):  # eps = inf rows: -inf - x -> clipped to 0
        vb = np.maximum(0.0, -sol.eps - sol.b) + 0.0  # + 0.0 turns -0.0 into 0.0
        va = np.maximum(0.0, -sol.eps - after) + 0.0
    info = ProjectionInfo(
        lam=t(sol.lam), active=t(sol.lam) > 0, eps=t(sol.eps), before=t(sol.b), after=t(after),
        violation_before=t(vb), violation_after=t(va), rel_change=rel, cos_G=t(cos_G),
        cos_g=t(cos_g), solver=sol.solver, iterations=sol.iterations, kkt_residual=sol.residual)
    return sol.delta, info


# ---------------------------------------------------------------------------------------------
# The sequential variant and a violation report


@torch.no_grad()
def project_sequential(g: torch.Tensor, G: torch.Tensor, eps=0.0, *, eps_mode: str = "absolute",
                       order: list[int] | None = None) -> torch.Tensor:
    """One half-space projection per skill, in a fixed order (default 0..S-1).

    For s in order: if <g_s, delta> < -eps_s, delta <- delta + (-eps_s - <g_s, delta>) / ||g_s||^2 g_s.
    Each step is the exact projection onto skill s's half-space (A-GEM's update for one
    constraint), but a later step may undo an earlier one; check with `constraint_violations`.
    Computed in Gram space (delta = g + G^T lam, one pass over d to form it); relative eps is
    resolved against the original g. g: (d,), G: (S, d). Returns (d,), g's dtype and device;
    g itself (cloned) when no step fires.
    """
    G = _check_inputs(g, G)
    K, b, gg = _gram(g, G)
    norms = np.sqrt(np.diag(K).clip(min=0.0))
    e = _eps_vector(eps, G.shape[0], eps_mode, gg ** 0.5, norms)
    lam = np.zeros(G.shape[0])
    for s in (range(G.shape[0]) if order is None else order):
        slack = b[s] + K[s] @ lam + e[s]                    # <g_s, delta> + eps_s
        if slack < 0 and K[s, s] > 0:
            lam[s] += -slack / K[s, s]
    if not lam.any():
        return g.clone()
    return _combine(g, G, lam)[0]


@torch.no_grad()
def constraint_violations(delta: torch.Tensor, G: torch.Tensor, eps=0.0) -> torch.Tensor:
    """max(0, -eps_s - <g_s, delta>) per skill: (S,) float64 on the CPU; all zeros iff feasible.

    delta: (d,), G: (S, d), eps: absolute slacks (float or (S,)); for relative slacks pass
    `resolve_eps(g, G, rel, "relative")` computed on the original g.
    """
    G = _check_inputs(delta, G)
    e = _eps_vector(eps, G.shape[0], "absolute", 0.0, np.zeros(G.shape[0]))
    return torch.as_tensor(np.maximum(0.0, -e - _dots(G, delta)) + 0.0, dtype=torch.float64)
