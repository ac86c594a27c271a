"""Tests of retainrl.safety.project: the exact skill-safe projection and its variants.

Problem: delta* = argmin ||delta - g||^2 s.t. <g_s, delta> >= -eps_s. KKT (see the module
docstring): delta = g + G^T lam, lam >= 0, G delta + eps >= 0, lam_s (G delta + eps)_s = 0.
The independent reference is scipy.optimize.nnls on Lawson & Hanson's least-distance
programming reduction (Solving Least Squares Problems, ch. 23), which works in the primal
d-space and shares no code or method with the Gram-space dual solver.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize, nnls

import importlib

P = importlib.import_module("retainrl.safety.project")  # the package exports the function `project`
from retainrl.safety import (
    constraint_violations,
    project,
    project_sequential,
    project_with_info,
    resolve_eps,
)

F64 = torch.float64


# ---------------------------------------------------------------------------------------------
# References and instance generators


def ldp_reference(g: np.ndarray, G: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """delta via LDP: x = delta - g solves min ||x|| s.t. G x >= f, f = -eps - G g.

    Lawson-Hanson: u = NNLS(E, e) with E = [G^T; f^T] (d+1, S), e = (0, ..., 0, 1);
    r = E u - e; x = -r[:d] / r[d] (r[d] != 0 because x = -g, i.e. delta = 0, is feasible).
    NNLS on E uses absolute tolerances, so the problem is first rescaled, exactly: rows to unit
    norm (eps_s / ||g_s||: the same half-spaces), and g and eps by 1 / ||g|| (the projection is
    positively homogeneous). Zero rows constrain nothing and are dropped.
    """
    d, gn = g.shape[0], np.linalg.norm(g)
    norms = np.linalg.norm(G, axis=1)
    keep = norms > 0
    if not keep.any() or gn == 0:
        return g.copy()
    G, eps, g = G[keep] / norms[keep, None], eps[keep] / norms[keep] / gn, g / gn
    f = -eps - G @ g
    E = np.vstack([G.T, f[None, :]])
    e = np.zeros(d + 1)
    e[-1] = 1.0
    u, _ = nnls(E, e, maxiter=50 * max(1, G.shape[0]) + 100)
    r = E @ u - e
    return gn * (g - r[:d] / r[d])


def slsqp_reference(g: np.ndarray, G: np.ndarray, eps: np.ndarray) -> np.ndarray:
    cons = [{"type": "ineq", "fun": lambda x: G @ x + eps, "jac": lambda x: G}]
    res = minimize(lambda x: 0.5 * np.sum((x - g) ** 2), g.copy(), jac=lambda x: x - g,
                   constraints=cons, method="SLSQP", options={"ftol": 1e-15, "maxiter": 500})
    return res.x


KINDS = ("gauss", "duplicate", "zero_row", "parallel", "antiparallel", "rank_deficient",
         "g_zero", "inside_cone", "feasible", "mixed_eps", "scaled")


def make_instance(rng: np.random.Generator, kind: str):
    """(g (d,), G (S, d), eps (S,)) float64 numpy; S in 1..8, d in 1..200."""
    S = int(rng.integers(1, 9))
    d = int(rng.integers(1, 201))
    G = rng.standard_normal((S, d))
    g = rng.standard_normal(d)
    eps = np.zeros(S)
    if kind == "duplicate" and S >= 2:
        G[1] = G[0]
        if S >= 3:
            G[2] = 2.5 * G[0]
    elif kind == "zero_row":
        G[rng.integers(S)] = 0.0
    elif kind == "parallel" and S >= 2:
        G[1] = 3.0 * G[0] + 1e-9 * rng.standard_normal(d)
    elif kind == "antiparallel" and S >= 2:
        G[1] = -0.5 * G[0]
        eps[:] = rng.uniform(0, 1, S)
    elif kind == "rank_deficient":
        d = int(rng.integers(1, S + 1))
        G = rng.standard_normal((S, d))
        g = rng.standard_normal(d)
    elif kind == "g_zero":
        g = np.zeros(d)
    elif kind == "inside_cone":  # -g in the cone of the rows: with eps = 0 the answer is 0
        g = -rng.uniform(0.1, 1.0, S) @ G
    elif kind == "feasible":
        eps = np.abs(G @ g) + rng.uniform(0, 1, S)
    elif kind == "mixed_eps":
        eps = np.where(rng.random(S) < 0.5, 0.0, rng.uniform(0, 3, S))
    elif kind == "scaled":
        G = G * 10.0 ** rng.uniform(-6, 6, (S, 1))
        g = g * 10.0 ** rng.uniform(-6, 6)
    return g, G, eps


def instances(n_per_kind: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    for kind in KINDS:
        for _ in range(n_per_kind):
            yield (kind, *make_instance(rng, kind))


def assert_kkt(g, G, eps, delta, lam, rtol=1e-9):
    """KKT of the projection with tolerances relative to ||g_s|| ||g|| (||delta|| <= 2 ||g||)."""
    g, G, eps = (torch.as_tensor(a, dtype=F64) for a in (g, G, eps))
    delta, lam = delta.to(F64), lam.to(F64)
    norms = G.norm(dim=1)
    scale = norms * g.norm() + 1e-300
    w = G @ delta + eps                                                   # slack per constraint
    assert (lam >= 0).all(), lam
    assert (w >= -rtol * scale).all(), (w / scale).min()                  # primal feasibility
    active = lam > 0
    assert (w[active].abs() <= rtol * scale[active] + 1e-300).all()       # complementary slackness
    stat = delta - g - G.T @ lam                                          # stationarity
    assert stat.norm() <= rtol * (g.norm() + (lam * norms).sum()) + 1e-300


# ---------------------------------------------------------------------------------------------
# Hand-computed examples


def test_d2_one_constraint_by_hand():
    # g = (1, 0); skill gradient g_1 = (-1, 1), eps = 0: feasible set delta_2 >= delta_1.
    # The nearest point of the line delta_2 = delta_1 to (1, 0) is (1/2, 1/2);
    # delta = g + lam g_1 = (1 - lam, lam) = (1/2, 1/2) -> lam = 1/2.
    g = torch.tensor([1.0, 0.0], dtype=F64)
    G = torch.tensor([[-1.0, 1.0]], dtype=F64)
    delta, info = project_with_info(g, G, 0.0)
    assert torch.allclose(delta, torch.tensor([0.5, 0.5], dtype=F64), rtol=0, atol=1e-15)
    assert info.lam.tolist() == pytest.approx([0.5], abs=1e-15)
    assert info.before.tolist() == [-1.0]                 # <g_1, g> = -1
    assert info.after.tolist() == pytest.approx([0.0], abs=1e-15)
    assert info.rel_change == pytest.approx(2 ** -0.5)    # ||(-1/2, 1/2)|| / 1


def test_d2_two_constraints_corner_by_hand():
    # g = (1, 0); g_1 = (-1, 1) with eps_1 = 0 and g_2 = (-1, -1) with eps_2 = 1/2:
    #   delta_2 >= delta_1  and  delta_1 + delta_2 <= 1/2; the two lines meet at (1/4, 1/4).
    # g - (1/4, 1/4) = (3/4, -1/4) = 1/2 (1, -1) + 1/4 (1, 1) = -(1/2 g_1 + 1/4 g_2), so both
    # constraints are active with lam = (1/2, 1/4) >= 0 and delta* = (1/4, 1/4).
    g = torch.tensor([1.0, 0.0], dtype=F64)
    G = torch.tensor([[-1.0, 1.0], [-1.0, -1.0]], dtype=F64)
    delta, info = project_with_info(g, G, torch.tensor([0.0, 0.5]))
    assert torch.allclose(delta, torch.tensor([0.25, 0.25], dtype=F64), rtol=0, atol=1e-15)
    assert info.lam.tolist() == pytest.approx([0.5, 0.25], abs=1e-15)
    assert info.active.tolist() == [True, True]


def test_d2_minus_g_inside_cone_gives_exact_zero():
    # Same rows, eps = 0: feasible set {delta_1 <= -|delta_2|}, a cone whose polar is
    # cone{(1, -1), (1, 1)}, which contains g = (1, 0) = 1/2 (1, -1) + 1/2 (1, 1).
    # So the projection of g is the apex 0, with lam = (1/2, 1/2).
    g = torch.tensor([1.0, 0.0], dtype=F64)
    G = torch.tensor([[-1.0, 1.0], [-1.0, -1.0]], dtype=F64)
    delta, info = project_with_info(g, G, 0.0)
    assert torch.equal(delta, torch.zeros(2, dtype=F64))
    assert info.lam.tolist() == pytest.approx([0.5, 0.5], abs=1e-15)


def test_single_constraint_closed_form():
    # One violated constraint: delta = g + max(0, -(eps + <g_1, g>)) / ||g_1||^2 g_1 (A-GEM).
    torch.manual_seed(0)
    g, g1 = torch.randn(50, dtype=F64), torch.randn(50, dtype=F64)
    g1 = g1 - (g1 @ g + 1.0) / (g @ g) * g            # force <g_1, g> = -1
    delta = project(g, g1[None], 0.25)
    expected = g + (1.0 - 0.25) / (g1 @ g1) * g1
    assert torch.allclose(delta, expected, rtol=1e-13, atol=1e-14)
    assert project_sequential(g, g1[None], 0.25).allclose(expected, rtol=1e-13, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# KKT and agreement with an independent solver on hundreds of random instances


@pytest.mark.parametrize("kind", KINDS)
def test_kkt_and_agreement_with_nnls_ldp(kind):
    rng = np.random.default_rng(100 + KINDS.index(kind))
    for _ in range(40):                                   # 11 kinds x 40 = 440 instances
        g, G, eps = make_instance(rng, kind)
        delta, info = project_with_info(torch.tensor(g), torch.tensor(G), torch.tensor(eps))
        assert_kkt(g, G, eps, delta, info.lam)
        ref = ldp_reference(g, G, eps)
        gn = np.linalg.norm(g)
        assert np.linalg.norm(delta.numpy() - ref) <= 1e-6 * gn + 1e-300, kind
        assert info.kkt_residual <= 1e-9


def test_agreement_with_slsqp():
    rng = np.random.default_rng(7)
    for _ in range(60):
        g, G, eps = make_instance(rng, "mixed_eps")
        g, G = g[:20], G[:, :20]                          # SLSQP is dense and slow in d
        delta = project(torch.tensor(g), torch.tensor(G), torch.tensor(eps)).numpy()
        ref = slsqp_reference(g, G, eps)
        assert np.linalg.norm(delta - ref) <= 1e-6 * max(np.linalg.norm(g), 1e-12)


def test_hildreth_solver_matches_enumeration_and_reference():
    # max_exact=0 forces the iterative solver on small instances; S up to 40 beyond them.
    rng = np.random.default_rng(3)
    for kind in ("gauss", "duplicate", "zero_row", "rank_deficient", "inside_cone", "mixed_eps"):
        for _ in range(10):
            g, G, eps = make_instance(rng, kind)
            args = (torch.tensor(g), torch.tensor(G), torch.tensor(eps))
            it, info = project_with_info(*args, max_exact=0)
            assert info.solver in ("hildreth", "feasible")
            assert torch.allclose(it, project(*args), rtol=0, atol=1e-8 * np.linalg.norm(g) + 1e-300)
    for S, d in [(12, 30), (20, 200), (40, 100), (30, 10)]:
        g, G = rng.standard_normal(d), rng.standard_normal((S, d))
        eps = rng.uniform(0, 0.5, S)
        delta, info = project_with_info(torch.tensor(g), torch.tensor(G), torch.tensor(eps))
        assert info.solver == "hildreth" and info.kkt_residual <= 1e-12
        assert_kkt(g, G, eps, delta, info.lam)
        assert np.linalg.norm(delta.numpy() - ldp_reference(g, G, eps)) <= 1e-6 * np.linalg.norm(g)


# ---------------------------------------------------------------------------------------------
# Edge cases


def test_feasible_g_returned_bit_for_bit():
    torch.manual_seed(1)
    g = torch.randn(100)
    G = torch.randn(5, 100)
    eps = (G @ g).clamp(max=0).abs() + 0.1              # every <g_s, g> >= -eps_s
    delta, info = project_with_info(g, G, eps)
    assert torch.equal(delta, g) and delta is not g and delta.dtype == g.dtype
    assert info.solver == "feasible" and not info.active.any()
    G2 = torch.randn(3, 100)
    G2 = G2 + ((1.0 - G2 @ g) / (g @ g))[:, None] * g   # <g_s, g> = 1 > 0
    assert torch.equal(project(g, G2, 0.0), g)


def test_g_zero_returns_zero():
    G = torch.randn(4, 30, dtype=F64)
    for eps in (0.0, 1.0):
        out = project(torch.zeros(30, dtype=F64), G, eps)
        assert torch.equal(out, torch.zeros(30, dtype=F64))


def test_zero_rows_are_ignored():
    torch.manual_seed(2)
    g, G = torch.randn(20, dtype=F64), torch.randn(3, 20, dtype=F64)
    with_zeros = torch.cat([G[:1], torch.zeros(2, 20, dtype=F64), G[1:]])
    d1, info = project_with_info(g, with_zeros, 0.0)
    assert torch.allclose(d1, project(g, G, 0.0), rtol=0, atol=1e-13)
    assert info.lam[1:3].tolist() == [0.0, 0.0]
    assert project(g, torch.zeros(3, 20, dtype=F64), 0.0).equal(g)


def test_duplicated_and_parallel_constraints_match_single():
    # Duplicates (and positive multiples) define the same half-space when eps scales with
    # the row: <c g_1, delta> >= -c eps_1. The Gram matrix is rank one; delta is unique.
    torch.manual_seed(3)
    g, g1 = torch.randn(40, dtype=F64), torch.randn(40, dtype=F64)
    g1 = g1 - (g1 @ g + 2.0) / (g @ g) * g
    single = project(g, g1[None], 0.3)
    G = torch.stack([g1, g1, 2.0 * g1, 0.5 * g1])
    eps = torch.tensor([0.3, 0.3, 0.6, 0.15], dtype=F64)
    delta, info = project_with_info(g, G, eps)
    assert torch.allclose(delta, single, rtol=0, atol=1e-13)
    assert_kkt(g, G, eps, delta, info.lam)
    # A looser duplicate never binds more than the tighter one.
    assert torch.allclose(project(g, torch.stack([g1, g1]), torch.tensor([0.3, 5.0], dtype=F64)), single,
                          rtol=0, atol=1e-13)


def test_nearly_parallel_constraints():
    torch.manual_seed(4)
    g, g1 = torch.randn(60, dtype=F64), torch.randn(60, dtype=F64)
    g1 = g1 - (g1 @ g + 1.0) / (g @ g) * g
    for noise in (1e-6, 1e-10, 1e-14):
        G = torch.stack([g1, g1 + noise * torch.randn(60, dtype=F64)])
        delta, info = project_with_info(g, G, 0.0)
        assert_kkt(g, G, torch.zeros(2), delta, info.lam)
        ref = ldp_reference(g.numpy(), G.numpy(), np.zeros(2))
        assert np.linalg.norm(delta.numpy() - ref) <= 1e-6 * g.norm().item()


def test_minus_g_in_cone_random_returns_exact_zero():
    rng = np.random.default_rng(5)
    for _ in range(50):
        S, d = int(rng.integers(1, 9)), int(rng.integers(1, 100))
        G = torch.tensor(rng.standard_normal((S, d)))
        g = -(torch.tensor(rng.uniform(0.1, 2.0, S)) @ G)
        assert torch.equal(project(g, G, 0.0), torch.zeros(d, dtype=F64))


def test_minus_g_partly_in_cone_is_exact_minimiser():
    # g = -g_1 + v with v orthogonal to g_1 and g_2 = v: the constraint <g_1, delta> >= 0
    # removes the -g_1 part exactly (lam_1 = 1) and <v, delta> = ||v||^2 > 0 is slack.
    torch.manual_seed(6)
    g1, v = torch.randn(30, dtype=F64), torch.randn(30, dtype=F64)
    v = v - (v @ g1) / (g1 @ g1) * g1
    delta, info = project_with_info(-g1 + v, torch.stack([g1, v]), 0.0)
    assert torch.allclose(delta, v, rtol=0, atol=1e-13)
    assert info.lam.tolist() == pytest.approx([1.0, 0.0], abs=1e-13)


def test_float32_inputs():
    rng = np.random.default_rng(8)
    for _ in range(50):
        g, G, eps = make_instance(rng, "mixed_eps")
        g32, G32 = torch.tensor(g, dtype=torch.float32), torch.tensor(G, dtype=torch.float32)
        delta = project(g32, G32, torch.tensor(eps))
        assert delta.dtype == torch.float32 and delta.shape == g32.shape
        # Exact answer of the float32-rounded problem, then float32 rounding of it.
        ref = project(g32.double(), G32.double(), torch.tensor(eps))
        assert torch.allclose(delta.double(), ref, rtol=0, atol=1e-6 * ref.norm().item() + 1e-30)
        viol = constraint_violations(delta, G32, eps)
        assert (viol <= 1e-5 * G32.double().norm(dim=1) * g32.double().norm()).all()


def test_streaming_chunks_do_not_change_the_answer(monkeypatch):
    rng = np.random.default_rng(9)
    g, G, eps = make_instance(rng, "mixed_eps")
    args = (torch.tensor(g), torch.tensor(G), torch.tensor(eps))
    whole, info_whole = project_with_info(*args)
    monkeypatch.setattr(P, "_CHUNK", 7)
    chunked, info_chunked = project_with_info(*args)
    assert torch.allclose(whole, chunked, rtol=0, atol=1e-13 * np.linalg.norm(g))
    assert torch.allclose(info_whole.after, info_chunked.after, rtol=1e-10, atol=1e-10)


def test_large_d_float32():
    torch.manual_seed(10)
    d = 2_500_000                                       # three float64 chunks of 2^20
    g, G = torch.randn(d), torch.randn(4, d)
    G[0] -= ((G[0] @ g + 0.5 * g.norm() * G[0].norm()) / (g @ g)) * g   # cos(g_0, g) ~ -0.5
    delta, info = project_with_info(g, G, 0.0)
    assert info.active[0] and delta.dtype == torch.float32
    assert (info.violation_after <= 1e-6 * G.double().norm(dim=1) * g.double().norm()).all()


def test_inputs_not_modified_and_errors():
    g, G = torch.randn(10), torch.randn(3, 10)
    g0, G0 = g.clone(), G.clone()
    project(g, G, 0.0)
    project_sequential(g, G, 0.0)
    assert torch.equal(g, g0) and torch.equal(G, G0)
    with pytest.raises(ValueError):
        project(g, G, float("-inf"))
    with pytest.raises(ValueError):
        project(g, G, -0.1, eps_mode="relative")          # negative slack is absolute only
    with pytest.raises(ValueError):
        project(g, G, torch.tensor([0.0, float("nan"), 0.0]))
    with pytest.raises(ValueError):
        project(g, torch.randn(3, 11), 0.0)
    with pytest.raises(ValueError):
        project(g, G.clone().fill_(float("inf")), 0.0)
    assert project(g, G[0], 0.0).shape == (10,)          # a 1-D G is one constraint
    assert torch.equal(project(g, torch.zeros(0, 10), 0.0), g)
    # eps = inf switches a constraint off.
    assert torch.equal(project(g, G, float("inf")), g)


# ---------------------------------------------------------------------------------------------
# eps modes, diagnostics, the sequential variant


def test_relative_eps():
    torch.manual_seed(11)
    g, G = torch.randn(25, dtype=F64), torch.randn(3, 25, dtype=F64)
    rel = torch.tensor([0.0, 0.1, 0.3])
    eps = resolve_eps(g, G, rel, "relative")
    assert torch.allclose(eps, rel.double() * g.norm() * G.norm(dim=1), rtol=1e-14)
    assert torch.equal(project(g, G, rel, eps_mode="relative"), project(g, G, eps))
    # Scale invariance: scaling g by c scales delta by c under relative slack.
    assert torch.allclose(project(3.0 * g, G, rel, eps_mode="relative"),
                          3.0 * project(g, G, rel, eps_mode="relative"), rtol=1e-12, atol=1e-13)
    with pytest.raises(ValueError):
        resolve_eps(g, G, 0.1, "percent")


def test_info_diagnostics():
    torch.manual_seed(12)
    g, G = torch.randn(15, dtype=F64), torch.randn(4, 15, dtype=F64)
    delta, info = project_with_info(g, G, 0.0)
    assert torch.allclose(info.before, G @ g, rtol=1e-13)
    assert torch.allclose(info.after, G @ delta, rtol=1e-10, atol=1e-12)
    assert torch.equal(info.active, info.lam > 0)
    Gn = G / G.norm(dim=1, keepdim=True)
    assert torch.allclose(info.cos_G, Gn @ Gn.T, rtol=1e-12)
    assert torch.allclose(info.cos_g, Gn @ g / g.norm(), rtol=1e-12)
    assert info.rel_change == pytest.approx(((delta - g).norm() / g.norm()).item(), rel=1e-12)
    assert torch.allclose(info.violation_before, (-(G @ g)).clamp(min=0), rtol=1e-13)
    m = info.metrics(["gen", "repair", "reason", "fix"])
    assert m["proj/num_active"] == float(info.active.sum())
    assert m["proj/lam/repair"] == float(info.lam[1])
    assert all(isinstance(v, float) for v in m.values())


def test_sequential_violation_rate_exact_never_violates():
    """How often the one-pass sequential variant leaves a skill harmed.

    Measured on 200 random Gaussian instances per S (d = 20, eps = 0, seed 13), counting only
    instances where g violates at least one constraint; a violation is > 1e-9 relative to
    ||g_s|| ||g||. Median size of the leftover violation, as a cosine-like quantity
    -<g_s, delta> / (||g_s|| ||g||), among violated instances in brackets:

        S = 2: 22.5% (0.019)     S = 4: 51% (0.028)     S = 8: 88.5% (0.051)
        project (exact): 0% for every S.

    A larger sample (2000 per setting) gave S=2, d=10: 20%; S=4, d=20: 52%; S=4, d=1000: 46%
    (nearly orthogonal rows still leave small violations); S=8, d=50: 84%.
    """
    rng = np.random.default_rng(13)
    rates = {}
    for S in (2, 4, 8):
        bad_seq = bad_exact = total = 0
        while total < 200:
            G = torch.tensor(rng.standard_normal((S, 20)))
            g = torch.tensor(rng.standard_normal(20))
            if (G @ g).min() >= 0:
                continue
            total += 1
            tol = 1e-9 * G.norm(dim=1) * g.norm()
            bad_seq += bool((constraint_violations(project_sequential(g, G, 0.0), G) > tol).any())
            bad_exact += bool((constraint_violations(project(g, G, 0.0), G) > tol).any())
        rates[S] = bad_seq / total
        assert bad_exact == 0
    assert 0.1 < rates[2] < 0.35 and 0.35 < rates[4] < 0.7 and rates[8] > 0.7, rates


def test_sequential_is_exact_for_orthogonal_rows_and_keeps_order():
    # Orthogonal rows: the half-space projections commute, so one pass is the exact answer.
    torch.manual_seed(14)
    Q, _ = torch.linalg.qr(torch.randn(30, 5, dtype=F64))
    G = Q.T * torch.tensor([1.0, 2.0, 0.5, 3.0, 1.0], dtype=F64)[:, None]
    g = torch.randn(30, dtype=F64)
    exact = project(g, G, 0.1)
    assert torch.allclose(project_sequential(g, G, 0.1), exact, rtol=0, atol=1e-13)
    assert torch.allclose(project_sequential(g, G, 0.1, order=[4, 3, 2, 1, 0]), exact, rtol=0, atol=1e-13)
    # Non-orthogonal rows: the last constraint visited always holds after the pass.
    G = torch.randn(4, 30, dtype=F64)
    out = project_sequential(g, G, 0.0, order=[2, 0, 3, 1])
    assert constraint_violations(out, G)[1] <= 1e-12 * G[1].norm() * g.norm()


# ---------------------------------------------------------------------------------------------
# Negative slack (a budget counted from the phase start: a skill that lost too much must improve)


def test_d2_negative_slack_one_constraint_by_hand():
    # g = (1, 0), g_1 = (0, 1), eps = -1: delta_2 >= 1. Nearest point: (1, 1) = g + 1 * g_1.
    g, G = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([[0.0, 1.0]], dtype=F64)
    delta, info = project_with_info(g, G, -1.0)
    assert delta.tolist() == pytest.approx([1.0, 1.0], abs=1e-15)
    assert info.lam.tolist() == pytest.approx([1.0], abs=1e-15)
    assert info.violation_before.tolist() == [1.0] and info.violation_after.tolist() == [0.0]
    # g_1 = (-1, 1), eps = -1: delta_2 - delta_1 >= 1; delta = (1 - lam, lam) -> lam = 1, delta = (0, 1)
    delta, info = project_with_info(g, torch.tensor([[-1.0, 1.0]], dtype=F64), -1.0)
    assert delta.tolist() == pytest.approx([0.0, 1.0], abs=1e-15)
    assert info.lam.tolist() == pytest.approx([1.0], abs=1e-15)


def test_d2_negative_slack_two_constraints_by_hand():
    # delta_2 >= 1 (g_1 = (0, 1), eps_1 = -1) and -delta_1 >= 0.5 (g_2 = (-1, 0), eps_2 = -0.5):
    # the corner (-0.5, 1) = (1, 0) + 1 * (0, 1) + 1.5 * (-1, 0); both active.
    g = torch.tensor([1.0, 0.0], dtype=F64)
    G = torch.tensor([[0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    delta, info = project_with_info(g, G, torch.tensor([-1.0, -0.5]))
    assert delta.tolist() == pytest.approx([-0.5, 1.0], abs=1e-15)
    assert info.lam.tolist() == pytest.approx([1.0, 1.5], abs=1e-14)
    # a negative slack on one row and a positive one on the other: only the first binds
    delta, info = project_with_info(g, G, torch.tensor([-1.0, 2.0]))
    assert delta.tolist() == pytest.approx([1.0, 1.0], abs=1e-15)
    assert info.lam.tolist() == pytest.approx([1.0, 0.0], abs=1e-15)


def test_g_zero_with_negative_slack_takes_the_shortest_restoring_step():
    # <(3, 4), delta> >= 5 from delta = 0: delta = 5 / 25 * (3, 4) = (0.6, 0.8), lam = 0.2
    delta, info = project_with_info(torch.zeros(2, dtype=F64), torch.tensor([[3.0, 4.0]], dtype=F64), -5.0)
    assert delta.tolist() == pytest.approx([0.6, 0.8], abs=1e-15)
    assert info.lam.tolist() == pytest.approx([0.2], abs=1e-15)


def test_negative_slack_cases_without_a_solution_are_reported_not_raised():
    g = torch.tensor([1.0, 0.0], dtype=F64)
    # a zero row asking for improvement: nothing restores it; g comes back, the violation is reported
    delta, info = project_with_info(g, torch.zeros(1, 2, dtype=F64), -1.0)
    assert torch.equal(delta, g) and info.solver == "unbindable" and info.violation_after.tolist() == [1.0]
    # opposite rows both asking for improvement: jointly infeasible; a finite answer, a residual > 0
    delta, info = project_with_info(g, torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=F64), -1.0)
    assert torch.isfinite(delta).all() and float(info.violation_after.max()) > 0 and info.kkt_residual > 0


@pytest.mark.parametrize("solver_exact", [8, 0])
def test_negative_slack_random_matches_slsqp_and_kkt(solver_exact):
    # full-rank rows (S <= d) make any slacks jointly feasible; both solvers must be exact
    rng = np.random.default_rng(5)
    for _ in range(40):
        S = int(rng.integers(1, 7))
        d = int(rng.integers(S, 30))
        G, g = rng.standard_normal((S, d)), rng.standard_normal(d) * rng.choice([0.0, 1.0], p=[0.2, 0.8])
        eps = rng.uniform(-2, 1, S)
        delta, info = project_with_info(torch.tensor(g), torch.tensor(G), torch.tensor(eps), max_exact=solver_exact)
        assert_kkt(g, G, eps, delta, info.lam, rtol=1e-8) if np.linalg.norm(g) > 0 else None
        assert float(info.violation_after.max()) <= 1e-9 * (1 + np.abs(eps).max())
        ref = slsqp_reference(g, G, eps)
        assert np.allclose(delta.numpy(), ref, atol=1e-6 * (1 + np.linalg.norm(ref)))
