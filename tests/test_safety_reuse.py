"""Protected rows reused across steps (safety.rows_every): the memory's forward + backward runs every k
steps, in between the rows are the stored gradients and (prompt_ll*) their values are measured again.
By hand on a linear and a quadratic stand-in for J, a checkpoint round trip of the stored rows, and
kill-and-resume of a tiny run."""

from __future__ import annotations

import pytest
import torch

from retainrl.safety.layer import SafetyLayer
from retainrl.train.config import SafetyConfig
from tests.test_safety_trust import QuadraticAnswers


class Counting(QuadraticAnswers):
    calls = 0

    def values_and_grads(self, policy, params, prompts, method="auto"):
        Counting.calls += 1
        return super().values_and_grads(policy, params, prompts, method)


def _layer(b, rows_every=3, **kw):
    cfg = SafetyConfig(enabled=True, diagnostics_every=1, space="step", constraint="prompt_ll", budget="phase", eps=0.0,
                       eps_mode="absolute", batch_prompts=2, heldout_prompts=0, refresh_every=100,
                       rows_every=rows_every, **kw)
    layer = SafetyLayer(cfg, {"gen": [0]}, None, seed=0)
    p = torch.nn.Parameter(torch.zeros(2))
    layer.answer_memories["gen"] = Counting(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor(b), p)
    layer.mark_phase(["gen"], [p])               # theta_0 = (0, 0)
    Counting.calls = 0
    return layer, p


def _step(layer, p, grad, step):
    p.grad = torch.tensor(grad)
    return layer.step([p], torch.optim.SGD([p], lr=1.0), policy=None, sandbox=None, step=step, protected=["gen"])


def test_linear_J_reused_rows_are_exact_and_computed_every_k_steps():
    # J = theta (A = I): gradients constant, so reuse changes nothing but the number of passes.
    # Phase budget, eps 0: J_p(theta) >= J_p(theta_0) = 0, i.e. theta >= 0 componentwise.
    layer, p = _layer([0.0, 0.0])
    for step, grad, want in [(0, [1.0, -1.0], [0.0, 1.0]),       # D = (-1, 1) -> (0, 1)
                             (1, [1.0, 0.0], [0.0, 1.0]),        # D = (-1, 0) -> (0, 0): theta_1 >= 0 binds
                             (2, [0.0, 2.0], [0.0, 0.0]),        # D = (0, -2) -> (0, -1): J_2 back to 0
                             (3, [-1.0, 0.0], [1.0, 0.0])]:
        m = _step(layer, p, grad, step)
        assert p.detach().tolist() == pytest.approx(want, abs=1e-6), step
        assert m["safety/max_violation_after"] <= 1e-9
    assert Counting.calls == 2                  # steps 0 and 3 (rows_every = 3)


def test_quadratic_J_reused_rows_are_stale_and_values_measured():
    # J_1 = theta_1 + ||theta||^2, J_2 = theta_2. Step 0 at theta = 0: rows g = I, values 0.
    # D = (0, 1) passes -> theta = (0, 1). Step 1 reuses g = I (the fresh g_1 is (1, 2)) with the values
    # measured now, J = (1, 1): budget rows 1 + D_1 >= 0 (stale; fresh: 1 + D_1 + 2 D_2 >= 0), 1 + D_2 >= 0.
    # D = (-1.5, 0): the stale row projects it to (-1, 0); the fresh row to (-1.5, 0) + 0.1 (1, 2).
    layer, p = _layer([1.0, 0.0])
    _step(layer, p, [0.0, -1.0], 0)
    assert p.detach().tolist() == pytest.approx([0.0, 1.0])
    m = _step(layer, p, [1.5, 0.0], 1)
    assert Counting.calls == 1
    assert p.detach().tolist() == pytest.approx([-1.0, 1.0], abs=1e-6)
    assert m["safety/drift/gen"] == pytest.approx(1.0)            # measured (1, 1), not first order (0, 1)
    fresh, q = _layer([1.0, 0.0], rows_every=1)
    _step(fresh, q, [0.0, -1.0], 0)
    _step(fresh, q, [1.5, 0.0], 1)
    assert Counting.calls == 2 and q.detach().tolist() == pytest.approx([-1.4, 1.2], abs=1e-6)


def test_a_refresh_recomputes_at_once_and_the_rows_survive_a_checkpoint():
    layer, p = _layer([0.0, 0.0], rows_every=10)
    _step(layer, p, [0.0, -1.0], 0)
    from retainrl.train import checkpoint

    state = checkpoint.loads(checkpoint.dumps({"safety": layer.state()}))["safety"]   # the real encoder
    again = SafetyLayer(layer.cfg, {"gen": [0]}, None, seed=0)
    again.answer_memories["gen"] = layer.answer_memories["gen"]
    again.load_state(state)
    _step(again, p, [0.0, -1.0], 1)
    assert Counting.calls == 1                  # the restored rows are reused
    layer.answer_memories["gen"].refreshed_at = 1    # a refresh since: computed again
    _step(again, p, [0.0, -1.0], 2)
    assert Counting.calls == 2


def test_kill_and_resume_with_reused_rows_gives_identical_metrics(tmp_path):
    # prompt_ll with rows_every = 3 over gen -> repair -> reason (2 steps a phase): killed right after the
    # second protected step (its checkpoint holds rows computed at the first), the rerun must reuse them as the
    # straight run does (without the rows in the checkpoint it recomputes, and the metrics differ: checked)
    import json
    import os
    import signal
    import time

    from tests.test_train_e2e import FAST, _finish, _lines, _stable, _train

    args = [*FAST, "safety.enabled=true", "safety.constraint=prompt_ll", "safety.budget=phase",
            "safety.eps_mode=absolute", "safety.eps=0.01", "safety.rows_every=3", "safety.memory_prompts=4",
            "safety.heldout_prompts=1", "safety.batch_prompts=2"]
    straight = tmp_path / "straight"
    _finish(_train(straight, *args))
    resumed = tmp_path / "resumed"
    proc = _train(resumed, *args)
    def step4_done() -> bool:
        for line in metrics.read_text().splitlines() if metrics.exists() else []:
            try:
                r = json.loads(line)
            except ValueError:   # a line being written
                continue
            if r.get("kind") == "train" and r.get("step") == 4:
                return True
        return False

    metrics, deadline = resumed / "metrics.jsonl", time.monotonic() + 900
    while time.monotonic() < deadline and not step4_done():
        time.sleep(0.1)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (resumed / "summary.json").exists(), "the run finished before the kill"
    _finish(_train(resumed, *args))
    a, b = _stable(_lines(straight / "metrics.jsonl")), _stable(_lines(resumed / "metrics.jsonl"))
    assert a == b
    assert any(r.get("safety/num_rows", 0) > 0 for r in a if r["kind"] == "train"), "no row was ever built"
