"""The trust region on the protected prompts (issue 12, section 2, bullet 3): KL_p to the phase-start
policy modelled as 1/2 (a_p + g_p . Delta)^2 and held as two linear rows per prompt. By hand on a
linear and a quadratic stand-in for J, config errors, and a tiny end-to-end run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retainrl.safety.layer import SafetyLayer
from retainrl.train.config import SafetyConfig
from tests.test_safety_constraints import LinearAnswers

ROOT = Path(__file__).resolve().parents[1]


class QuadraticAnswers(LinearAnswers):
    """J_p(theta) = <A_p, theta> + b_p ||theta||^2: curvature the rank-one Fisher model does not see."""

    def __init__(self, A, b, param):
        super().__init__(A, param)
        self.b = b

    def values(self, policy, prompts):
        th = self.param.detach()
        return (self.A[prompts] @ th + self.b[prompts] * (th @ th)).double()

    def values_and_grads(self, policy, params, prompts, method="auto"):
        th = self.param.detach()
        return self.values(policy, prompts), self.A[prompts] + 2 * self.b[prompts][:, None] * th


def _layer(mem_cls, *mem_args, constraint="prompt_ll", budget="step", eps=0.0, delta=0.125, **kw):
    cfg = SafetyConfig(enabled=True, diagnostics_every=1, space="step", constraint=constraint, budget=budget, eps=eps,
                       eps_mode="absolute", batch_prompts=2, heldout_prompts=0, refresh_every=100,
                       trust_region=delta, **kw)
    layer = SafetyLayer(cfg, {"gen": [0]}, None, seed=0)
    p = torch.nn.Parameter(torch.zeros(2))
    layer.answer_memories["gen"] = mem_cls(*mem_args, p)
    layer.mark_phase(["gen"], [p])               # theta_0 = (0, 0)
    with torch.no_grad():
        p.copy_(torch.tensor([-0.5, 0.5]))
    return layer, p


def _step(layer, p, grad):
    p.grad = torch.tensor(grad)
    return layer.step([p], torch.optim.SGD([p], lr=1.0), policy=None, sandbox=None, step=1, protected=["gen"])


def test_trust_rows_by_hand_on_a_linear_J():
    # J = A theta, A = diag(2, 1); theta_t = (-0.5, 0.5): drift a = (-1, 0.5); delta = 1/8: radius 0.5.
    # Slab rows -0.5 - a_p <= x_p <= 0.5 - a_p, x_p = A_p . D, merged with the step budget's x_p >= 0:
    # prompt 1: 0.5 <= 2 D_1 <= 1.5; prompt 2: 0 <= D_2 <= 0. The SGD step (0, 1) becomes (0.25, 0).
    layer, p = _layer(LinearAnswers, torch.tensor([[2.0, 0.0], [0.0, 1.0]]))
    m = _step(layer, p, [0.0, -1.0])
    assert p.detach().tolist() == pytest.approx([-0.25, 0.5], abs=1e-6)
    assert m["safety/num_rows"] == 4.0 and m["safety/rows/gen"] == 4.0
    assert m["safety/max_violation_after"] <= 1e-9
    assert m["safety/trust/kl_before/gen"] == pytest.approx(0.5)          # 1/2 a_1^2
    assert m["safety/trust/kl_predicted/gen"] == pytest.approx(0.125, abs=1e-6)   # on the boundary, both prompts
    assert m["safety/trust/kl_realised/gen"] == pytest.approx(0.125, abs=1e-6)    # linear J: model exact
    assert m["safety/trust/outside_frac/gen"] == 0.0
    assert m["safety/drift/gen"] == pytest.approx(-0.25)


def test_a_step_inside_the_region_is_unchanged():
    layer, p = _layer(LinearAnswers, torch.tensor([[2.0, 0.0], [0.0, 1.0]]), delta=2.0)   # radius 2
    m = _step(layer, p, [-0.1, -0.1])            # x = (0.2, 0.1): a + x = (-0.8, 0.6), inside; budget holds
    assert p.detach().tolist() == pytest.approx([-0.4, 0.6], abs=1e-7)
    assert m["safety/num_active"] == 0.0 and m["safety/trust/kl_predicted/gen"] == pytest.approx(0.32, abs=1e-6)


def test_the_region_is_two_sided_and_merges_with_the_phase_budget():
    # budget=phase, eps = 1: own lower slack a + 1 = (0, 1.5); trust radius 0.5: (-0.5, 1); tighter: (-0.5, 1).
    # prompt 1: 0.5 <= 2 D_1 <= 1.5; prompt 2: -1 <= D_2 <= 0. A step that *improves* J_2 (D = (0.5, 1))
    # is cut back to D_2 = 0: the KL to theta_0 grows in either direction.
    layer, p = _layer(LinearAnswers, torch.tensor([[2.0, 0.0], [0.0, 1.0]]), budget="phase", eps=1.0)
    m = _step(layer, p, [-0.5, -1.0])
    assert p.detach().tolist() == pytest.approx([0.0, 0.5], abs=1e-6)
    assert m["safety/budget/gen"] == pytest.approx(0.75) and m["safety/num_rows"] == 4.0


def test_curvature_outside_the_model_is_reported_not_hidden():
    # J_1 = 2 th_1 + ||th||^2, J_2 = th_2. At theta_t = (-0.5, 0.5): J = (-0.5, 0.5) = a, g = ((1, 1), (0, 1)).
    # Rows: 0 <= D_1 + D_2 <= 1 (x_1 >= 0 from the step budget), 0 <= D_2 <= 0. The step (2, 1) -> (1, 0).
    # Model after: 1/2 (a + x)^2 = (0.125, 0.125); measured J_1(0.5, 0.5) = 1.5: 1/2 * 1.5^2 = 1.125 > delta.
    A, b = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([1.0, 0.0])
    layer, p = _layer(QuadraticAnswers, A, b)
    m = _step(layer, p, [-2.0, -1.0])
    assert p.detach().tolist() == pytest.approx([0.5, 0.5], abs=1e-6)
    assert m["safety/trust/kl_predicted/gen"] == pytest.approx(0.125, abs=1e-6)
    assert m["safety/trust/kl_realised/gen"] == pytest.approx(1.125, abs=1e-6)
    assert m["safety/trust/outside_frac/gen"] == 0.5


def test_trust_rows_with_the_subspace_constraint():
    # subspace rows +-(sqrt 2, 0), +-(0, 1/sqrt 2) with eps 0 freeze both directions; the trust rows
    # (slack >= 0 here: theta_t = theta_0) add 2 per prompt: 4 + 4 rows, and the step is 0.
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    layer, p = _layer(LinearAnswers, A, constraint="prompt_ll_subspace")
    with torch.no_grad():
        p.zero_()
    m = _step(layer, p, [-1.0, -1.0])
    assert m["safety/rows/gen"] == 8.0 and m["safety/num_rows"] == 8.0
    assert p.detach().tolist() == pytest.approx([0.0, 0.0], abs=1e-6)


def test_trust_region_needs_answer_rows_absolute_step_space():
    with pytest.raises(ValueError, match="prompt_ll"):
        SafetyLayer(SafetyConfig(trust_region=0.1, eps_mode="absolute", constraint="skill_mean", budget="step"),
                    {}, None, seed=0)
    with pytest.raises(ValueError, match="eps_mode=absolute"):
        SafetyLayer(SafetyConfig(trust_region=0.1, constraint="prompt_ll", eps_mode="relative", budget="step"),
                    {}, None, seed=0)
    with pytest.raises(ValueError, match="eps_mode=absolute"):
        SafetyLayer(SafetyConfig(trust_region=0.1, constraint="prompt_ll", eps_mode="absolute", space="grad"),
                    {}, None, seed=0)


def test_tiny_run_with_the_trust_region(tmp_path):
    out = tmp_path / "trust"
    args = ["world.n_heldout=4", "eval.max_new_tokens=24", "sampling.max_new_tokens=24", "eval.n_samples=1",
            "protocol.phases=[gen,repair]", "protocol.steps_per_phase=2", "safety.enabled=true",
            "safety.constraint=prompt_ll", "safety.budget=phase", "safety.eps_mode=absolute", "safety.eps=0.01",
            "safety.trust_region=0.001", "safety.memory_prompts=6", "safety.heldout_prompts=2",
            "safety.batch_prompts=3", "safety.memory_samples=4", "safety.diagnostics_every=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "retainrl", "train", str(ROOT / "configs" / "smoke.yaml"), *args,
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["kind"] == "train" and r["phase"] == 1]
    assert len(train) == 2
    bound = [r for r in train if r.get("safety/num_rows", 0) > 0]
    assert bound, "no constraint row in the whole run"
    for r in bound:
        assert r["safety/rows/gen"] == r["safety/num_rows"] and r["safety/num_rows"] % 2 == 0  # 2 per prompt
        assert r["safety/trust/kl_predicted/gen"] <= 0.001 * (1 + 1e-4) + 1e-9
        assert "safety/trust/kl_realised/gen" in r and "safety/trust/kl_before/gen" in r
        assert r.get("safety/max_violation_after", 0.0) <= 1e-6
