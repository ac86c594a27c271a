"""Where the constraint holds: step-space projection keeps <grad J_s, applied step> >= -eps under
Adam; gradient-space projection is exact only for SGD (Adam's preconditioner bends it)."""

from __future__ import annotations

import torch

from retainrl.safety.layer import flat_params, safe_step, write_flat


def _instance(seed: int, d: int = 40, S: int = 3):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.rand(d, generator=gen) * 10 + 0.1  # uneven scales: Adam's preconditioner matters
    g = torch.randn(d, generator=gen) * scales
    G = torch.randn(S, d, generator=gen) * scales - 0.7 * g  # protected gradients conflict with g
    return g, G


def _step(g, G, opt_name: str, space: str, warm: int = 3):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(g.numel()))
    opt = torch.optim.Adam([p], lr=0.1) if opt_name == "adam" else torch.optim.SGD([p], lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(warm):  # give Adam non-trivial moments first
        write_flat([p], torch.randn(g.numel(), generator=gen) * g.abs(), "grad")
        opt.step()
    applied, metrics = safe_step([p], opt, g, G, 0.0, "absolute", space, "exact")
    return applied, metrics


def _worst_change(G, applied):
    # first-order change of J_s = -<G_s, applied>; the constraint asks for >= -eps = 0
    return float((-(G.double() @ applied.double())).min())


def test_step_space_guarantee_holds_under_adam():
    for seed in range(30):
        g, G = _instance(seed)
        applied, _ = _step(g, G, "adam", "step")
        assert _worst_change(G, applied) >= -1e-6 * float(G.norm() * applied.norm())


def test_grad_space_is_exact_for_sgd():
    for seed in range(30):
        g, G = _instance(seed)
        applied, _ = _step(g, G, "sgd", "grad")
        assert _worst_change(G, applied) >= -1e-6 * float(G.norm() * applied.norm())


def test_grad_space_under_adam_can_break_the_constraint():
    broken = 0
    for seed in range(30):
        g, G = _instance(seed)
        applied, _ = _step(g, G, "adam", "grad")
        broken += _worst_change(G, applied) < -1e-6 * float(G.norm() * applied.norm())
    # Measured on these 30 seeded instances; the point is that it happens, not how often.
    assert broken > 0


def test_feasible_update_is_left_alone():
    g = torch.tensor([1.0, 0.0])
    G = torch.tensor([[1.0, 1.0]])  # aligned with g: no conflict
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    applied, metrics = safe_step([p], opt, g, G, 0.0, "absolute", "step", "exact")
    assert torch.allclose(applied, torch.tensor([-0.5, 0.0]))
    assert metrics["proj/num_active"] == 0.0


def test_hand_computed_projection_of_sgd_step():
    # g = (1, 0), protected G_s = (-1, 1): the SGD step -lr*g = (-0.5, 0) changes J_s by
    # -<G_s, step> = -0.5 < 0. Projecting u = -step = (0.5, 0) onto <G_s, u> >= 0 gives
    # u* = (0.25, 0.25), so the applied step is (-0.25, -0.25).
    g = torch.tensor([1.0, 0.0])
    G = torch.tensor([[-1.0, 1.0]])
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    applied, _ = safe_step([p], opt, g, G, 0.0, "absolute", "step", "exact")
    assert torch.allclose(applied, torch.tensor([-0.25, -0.25]))
    assert torch.allclose(flat_params([p]), torch.tensor([-0.25, -0.25]))
