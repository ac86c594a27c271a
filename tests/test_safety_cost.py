"""Options that cut the skill-safe step's cost without changing what it constrains: diagnostics every
k steps (safety.diagnostics_every: the same updates, the held-out and realised measurements only on
diagnostic steps) and answers kept for the whole phase (safety.refresh_every=0: one refresh per
protected set, also across a checkpoint). On the linear stand-in for J."""

from __future__ import annotations

import pytest
import torch

from retainrl.safety.layer import SafetyLayer
from retainrl.train import checkpoint
from retainrl.train.config import SafetyConfig
from tests.test_safety_constraints import LinearAnswers


class CountingRefresh(LinearAnswers):
    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.refreshes: list[int] = []

    def refresh(self, policy, sandbox, sampling, seed, step):
        super().refresh(policy, sandbox, sampling, seed, step)
        self.refreshes.append(step)


def _layer(A, p, n_held=0, **kw):
    cfg = SafetyConfig(enabled=True, space="step", constraint="prompt_ll", budget="phase", eps=0.1,
                       eps_mode="absolute", batch_prompts=A.shape[0] - n_held, **kw)
    layer = SafetyLayer(cfg, {"gen": [0], "repair": [0]}, None, seed=0)
    for s in ("gen", "repair"):
        layer.answer_memories[s] = CountingRefresh(A, p, n_held)
        layer.answer_memories[s].refreshed_at = -1
    return layer


def _run(layer, p, steps, protected=lambda t: ["gen"]):
    out = []
    opt = torch.optim.SGD([p], lr=0.5)
    for t in range(steps):
        p.grad = torch.tensor([1.0, -1.0])
        out.append(layer.step([p], opt, policy=None, sandbox=None, step=t, protected=protected(t)))
    return out


def test_diagnostics_every_k_steps_same_updates():
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])          # the third prompt is held out
    runs = {}
    for k in (1, 3):
        p = torch.nn.Parameter(torch.zeros(2))
        layer = _layer(A, p, n_held=1, diagnostics_every=k)
        runs[k] = (_run(layer, p, 5), p.detach().clone())
    assert torch.equal(runs[1][1], runs[3][1])                      # the update never depends on k
    for t, (m1, m3) in enumerate(zip(runs[1][0], runs[3][0])):
        assert m1["safety/num_rows"] == m3["safety/num_rows"] == 2.0
        assert m1["safety/predicted_dJ/gen"] == pytest.approx(m3["safety/predicted_dJ/gen"])
        assert "safety/realised_dJ/gen" in m1 and "safety/heldout_predicted_dJ/gen" in m1
        on = t % 3 == 0                                              # steps 0 and 3
        assert ("safety/realised_dJ/gen" in m3) == on and ("safety/heldout_realised_dJ/gen" in m3) == on
        assert ("safety/heldout_predicted_dJ/gen" in m3) == on
        if on:
            assert m3["safety/heldout_realised_dJ/gen"] == pytest.approx(m1["safety/heldout_realised_dJ/gen"])


def test_refresh_every_zero_refreshes_once_per_protected_set_and_across_a_checkpoint():
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    p = torch.nn.Parameter(torch.zeros(2))
    phases = lambda t: ["gen"] if t < 4 else ["gen", "repair"]   # noqa: E731  a phase change at step 4
    layer = _layer(A, p, refresh_every=0)
    _run(layer, p, 6, phases)
    gen, rep = layer.answer_memories["gen"], layer.answer_memories["repair"]
    assert gen.refreshes == [0, 4] and rep.refreshes == [4]        # at each phase start only
    # resumed from a checkpoint in the middle of the second phase: no refresh until the set changes
    again = _layer(A, p, refresh_every=0)
    again.load_state(checkpoint.loads(checkpoint.dumps({"safety": layer.state()}))["safety"])
    for s in ("gen", "repair"):
        again.answer_memories[s].refreshes = []
    opt = torch.optim.SGD([p], lr=0.5)
    for t in (6, 7):
        p.grad = torch.tensor([1.0, -1.0])
        again.step([p], opt, policy=None, sandbox=None, step=t, protected=["gen", "repair"])
    assert again.answer_memories["gen"].refreshes == [] and again.answer_memories["repair"].refreshes == []
    p.grad = torch.tensor([1.0, -1.0])
    again.step([p], opt, policy=None, sandbox=None, step=8, protected=["repair"])
    assert again.answer_memories["repair"].refreshes == [8]
    # every k steps as before (k = 3): steps 0, 3 refresh
    q = torch.nn.Parameter(torch.zeros(2))
    layer = _layer(A, q, refresh_every=3)
    _run(layer, q, 5)
    assert layer.answer_memories["gen"].refreshes == [0, 3]


def test_held_out_diagnostics_on_every_diagnostic_step_with_reused_rows():
    """rows_every 3, diagnostics_every 2: the held-out rows are measured on every diagnostic step
    (also when the constraint rows are reused), never on the others; the updates are those of
    diagnostics on every step."""
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    runs = {}
    for k in (1, 2):
        p = torch.nn.Parameter(torch.zeros(2))
        layer = _layer(A, p, n_held=1, rows_every=3, diagnostics_every=k)
        runs[k] = (_run(layer, p, 8), p.detach().clone())
    assert torch.equal(runs[1][1], runs[2][1])
    for t, m in enumerate(runs[2][0]):
        assert ("safety/heldout_predicted_dJ/gen" in m) == (t % 2 == 0), t
        assert ("safety/realised_dJ/gen" in m) == (t % 2 == 0), t
        if t % 2 == 0:
            assert m["safety/heldout_predicted_dJ/gen"] == pytest.approx(runs[1][0][t]["safety/heldout_predicted_dJ/gen"])


def test_refresh_every_zero_with_the_memory_trigger_is_refused():
    cfg = SafetyConfig(enabled=True, constraint="skill_mean", budget="step", eps_mode="relative", refresh_every=0,
                       trigger=True, trigger_source="memory")
    with pytest.raises(ValueError, match="refresh_every=0"):
        SafetyLayer(cfg, {"gen": [0]}, None, seed=0)
