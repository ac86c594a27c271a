"""Constraints that bind (issue 12, section 2): per-prompt answer-likelihood rows (GEM-style), their
per-skill subspace (GPM-style), and the budget counted from the phase start (negative slack ->
a restoring step). Hand-computed builders on a linear stand-in for J, the subspace and step
geometry by hand, per-prompt gradients from one batched pass equal to one-at-a-time passes, and
tiny end-to-end runs of each new constraint type."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retainrl.safety.estimates import AnswerMemory, answer_loglik, per_prompt_values_and_grads
from retainrl.safety.layer import SafetyLayer, step_geometry, subspace_rows
from retainrl.train.config import SafetyConfig

ROOT = Path(__file__).resolve().parents[1]


# -- pure pieces by hand ------------------------------------------------------------------------
def test_subspace_rows_by_hand():
    M = torch.tensor([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])       # sigma^2 = 16, 9; energy 0.64, 1.0
    one = subspace_rows(M, energy=0.6, max_rank=4)
    assert one.shape == (1, 3)
    assert one[0].abs().tolist() == pytest.approx([0.0, 4 / 2 ** 0.5, 0.0], abs=1e-6)  # sigma / sqrt(P) u
    assert subspace_rows(M, energy=0.9, max_rank=4).shape == (2, 3)
    assert subspace_rows(M, energy=0.64, max_rank=4).shape == (1, 3)  # exactly reached: one is enough
    assert subspace_rows(M, energy=0.9, max_rank=1).shape == (1, 3)
    # rank-deficient: a second direction of zero energy is never kept; the zero matrix has none
    assert subspace_rows(torch.tensor([[1.0, 1.0], [2.0, 2.0]]), energy=1.0, max_rank=4).shape == (1, 2)
    assert subspace_rows(torch.zeros(3, 5), energy=0.9, max_rank=4).shape == (0, 5)
    # the kept rows span the top directions: projecting M onto them keeps >= energy of ||M||^2
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(6, 40, generator=gen) * torch.tensor([5.0, 3, 1, 0.5, 0.2, 0.1])[:, None]
    B = subspace_rows(M, energy=0.9, max_rank=6).double()
    U = torch.linalg.qr(B.T)[0]
    kept = float(((M.double() @ U) ** 2).sum() / (M.double() ** 2).sum())
    assert kept >= 0.9 - 1e-9
    assert torch.allclose((B @ B.T), torch.diag((B ** 2).sum(1)), atol=1e-4)  # orthogonal rows


def test_step_geometry_by_hand():
    m = step_geometry(torch.tensor([[1.0, 0.0, 0.0]]), torch.tensor([1.0, 1.0, 0.0]))
    assert m["safety/protected_share"] == pytest.approx(0.5) and m["safety/max_abs_cos"] == pytest.approx(2 ** -0.5)
    m = step_geometry(torch.tensor([[1.0, 1.0, 0.0], [1.0, -1.0, 0.0], [2.0, 0.0, 0.0]]), torch.tensor([1.0, 1.0, 1.0]))
    assert m["safety/protected_share"] == pytest.approx(2 / 3)  # span = the xy-plane (rows dependent)
    assert m["safety/num_rows"] == 3.0
    assert step_geometry(torch.zeros(0, 3), torch.ones(3))["safety/protected_share"] == 0.0


# -- builders on a linear stand-in: J_p(theta) = <A_p, theta> -------------------------------------
class LinearAnswers(AnswerMemory):
    """An answer memory whose J_p is linear in the one 2-d parameter: values and gradients by hand."""

    def __init__(self, A: torch.Tensor, param: torch.nn.Parameter, n_held: int = 0):
        super().__init__("gen", list(range(A.shape[0])), A.shape[0] - n_held, n_held, 2, seed=0)
        self.tasks, self.heldout = list(range(A.shape[0] - n_held)), list(range(A.shape[0] - n_held, A.shape[0]))
        self.A, self.param = A, param
        self.answers = ["answer"] * A.shape[0]

    def refresh(self, policy, sandbox, sampling, seed, step):
        self.refreshed_at, self.pass_rate = step, 1.0

    def values(self, policy, prompts):
        return (self.A[prompts] @ self.param.detach()).double()

    def values_and_grads(self, policy, params, prompts, method="auto"):
        return self.values(policy, prompts), self.A[prompts].clone()


def _layer(constraint: str, eps: float, A: torch.Tensor, n_held: int = 0, **kw):
    cfg = SafetyConfig(enabled=True, diagnostics_every=1, space="step", constraint=constraint, budget="phase", eps=eps,
                       eps_mode="absolute", batch_prompts=A.shape[0] - n_held, refresh_every=100, **kw)
    layer = SafetyLayer(cfg, {"gen": [0]}, None, seed=0)
    p = torch.nn.Parameter(torch.zeros(2))
    layer.answer_memories["gen"] = LinearAnswers(A, p, n_held)
    layer.mark_phase(["gen"], [p])               # theta_0 = (0, 0)
    with torch.no_grad():
        p.copy_(torch.tensor([-0.5, 0.5]))       # drift: J_t = A theta = (-1, 0.5) for A = diag(2, 1)
    return layer, p


def _step(layer, p, grad):
    p.grad = torch.tensor(grad)
    return layer.step([p], torch.optim.SGD([p], lr=1.0), policy=None, sandbox=None, step=1, protected=["gen"])


def test_prompt_rows_with_phase_budget_by_hand():
    # rows A_1 = (2, 0), A_2 = (0, 1); c = J_t - J_0 + eps = (-1, 0.5) + 0.25 = (-0.75, 0.75):
    # prompt 1 lost more than eps and must be restored: 2 D_1 >= 0.75; prompt 2: D_2 >= -0.75.
    # The SGD step D = (0, 1) (grad (0, -1), lr 1) becomes (0.375, 1).
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])   # the third prompt is held out
    layer, p = _layer("prompt_ll", 0.25, A, n_held=1)
    m = _step(layer, p, [0.0, -1.0])
    assert p.detach().tolist() == pytest.approx([-0.5 + 0.375, 1.5], abs=1e-6)
    assert m["safety/num_rows"] == 2.0 and m["safety/active_frac"] == 0.5
    assert m["safety/drift/gen"] == pytest.approx(-0.25) and m["safety/budget/gen"] == pytest.approx(0.0)
    assert m["safety/predicted_dJ/gen"] == pytest.approx(0.875, abs=1e-6)   # mean row (1, 0.5) . (0.375, 1)
    assert m["safety/realised_dJ/gen"] == pytest.approx(0.875, abs=1e-6)    # J is linear: realised = predicted
    assert m["safety/heldout_predicted_dJ/gen"] == pytest.approx(1.375, abs=1e-6)
    assert m["safety/heldout_realised_dJ/gen"] == pytest.approx(1.375, abs=1e-6)
    assert m["safety/max_violation_after"] <= 1e-9


def test_prompt_rows_with_step_budget_are_plain_gem():
    # budget "step", eps 0: every prompt row <A_p, D> >= 0; D = (-1, 1) -> (0, 1); no drift logged
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    cfg = SafetyConfig(enabled=True, diagnostics_every=1, space="step", constraint="prompt_ll", budget="step", eps=0.0, eps_mode="absolute",
                       batch_prompts=2, heldout_prompts=0)
    layer = SafetyLayer(cfg, {"gen": [0]}, None, seed=0)
    p = torch.nn.Parameter(torch.zeros(2))
    layer.answer_memories["gen"] = LinearAnswers(A, p)
    m = _step(layer, p, [1.0, -1.0])
    assert p.detach().tolist() == pytest.approx([0.0, 1.0], abs=1e-6)
    assert "safety/drift/gen" not in m and m["safety/num_active"] == 1.0


def test_subspace_rows_with_phase_budget_by_hand():
    # M = diag(2, 1): sigma^2 = 4, 1 (energy 0.8 < 0.9: both kept), rows +-(sqrt 2, 0), +-(0, 1/sqrt 2)
    # with slack eps = 0.5, plus the mean row (1, 0.5) with c_s = -0.25 + 0.5 = 0.25.
    # D = (0, 1): |D_2| / sqrt 2 <= 0.5 clips it to (0, 1/sqrt 2); the mean row holds (0.354 >= -0.25).
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    layer, p = _layer("prompt_ll_subspace", 0.5, A, heldout_prompts=0)
    m = _step(layer, p, [0.0, -1.0])
    assert p.detach().tolist() == pytest.approx([-0.5, 0.5 + 2 ** -0.5], abs=1e-6)
    assert m["safety/rank/gen"] == 2.0 and m["safety/num_rows"] == 5.0 and m["safety/recovery/gen"] == 0.0
    assert m["safety/budget/gen"] == pytest.approx(0.25)


def test_subspace_recovery_replaces_the_subspace_by_a_restoring_mean_row():
    # eps = 0.1: c_s = -0.25 + 0.1 = -0.15 < 0: recovery, one row (1, 0.5) . D >= 0.15.
    # D = (0, -1) + lam (1, 0.5): 1.25 lam - 0.5 = 0.15 -> lam = 0.52, D = (0.52, -0.74).
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    layer, p = _layer("prompt_ll_subspace", 0.1, A, heldout_prompts=0)
    m = _step(layer, p, [0.0, 1.0])
    assert p.detach().tolist() == pytest.approx([-0.5 + 0.52, 0.5 - 0.74], abs=1e-6)
    assert m["safety/recovery/gen"] == 1.0 and m["safety/num_rows"] == 1.0
    assert m["safety/predicted_dJ/gen"] == pytest.approx(0.15, abs=1e-6)


def test_phase_budget_anchor_moves_with_the_protected_set_only():
    A = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    layer, p = _layer("prompt_ll", 0.25, A, heldout_prompts=0)
    anchor = layer.anchor.clone()
    layer.mark_phase(["gen"], [p])                    # same protected set: theta_0 kept
    assert torch.equal(layer.anchor, anchor)
    layer.mark_phase(["gen", "repair"], [p])          # a new phase: theta_0 = now
    assert layer.anchor.tolist() == [-0.5, 0.5]


def test_phase_budget_needs_absolute_step_space_and_a_level():
    with pytest.raises(ValueError, match="skill_mean"):
        SafetyLayer(SafetyConfig(budget="phase", eps_mode="absolute", constraint="skill_mean"), {}, None, seed=0)
    with pytest.raises(ValueError, match="eps_mode=absolute"):
        SafetyLayer(SafetyConfig(budget="phase", constraint="prompt_ll", eps_mode="relative"), {}, None, seed=0)
    SafetyLayer(SafetyConfig(), {}, None, seed=0)  # the defaults (prompt_ll, phase, absolute) are a legal set


# -- the real quantity on the bundled model: batched == one at a time ------------------------------
@pytest.fixture(scope="module")
def policy_and_answers():
    from retainrl.policy.model import ModelConfig, load_policy
    from retainrl.policy.rollout import SamplingConfig, generate

    torch.manual_seed(0)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    with torch.no_grad():
        for n, q in policy.named_trainable().items():
            if "lora_B" in n:
                q.normal_(0, 0.02)
    r = generate(policy, ["def f(x):", "assert f(", "x = 1\ny ="], n=3, cfg=SamplingConfig(max_new_tokens=8), seed=0)
    answers = []
    for i, rows in enumerate([[0, 1, 2], [3], [6, 8]]):    # 3, 1 and 2 answers, different widths
        a = r.select(rows)
        a.group_size, a.temperature, a.task_index = 1, 1.0, [i] * len(rows)
        answers.append(a)
    return policy, answers


@pytest.mark.parametrize("overhead", [0, 64])
def test_per_prompt_rows_batched_equal_one_at_a_time(policy_and_answers, monkeypatch, overhead):
    """overhead 0: a bucket per row length, so the hooks pair several forward calls with one backward."""
    from retainrl.policy.rollout import completion_logprobs
    from retainrl.parallel import flat_grad
    from retainrl.safety import estimates

    monkeypatch.setattr(estimates, "BUCKET_OVERHEAD_TOKENS", overhead)
    policy, answers = policy_and_answers
    assert overhead or len(estimates.pack_rows(estimates.distinct_rows(answers)[0]).buckets) > 1
    params = policy.trainable_parameters()
    from retainrl.safety.estimates import _linear_modules

    assert _linear_modules(policy.model, params) is not None      # the one-backward hook path is taken
    marker = [torch.full_like(q, 7.0) for q in params]
    for q, m in zip(params, marker):
        q.grad = m
    J, G = per_prompt_values_and_grads(policy, params, answers)
    assert all(q.grad is m for q, m in zip(params, marker))       # the caller's .grad is untouched
    J_loop, G_loop = per_prompt_values_and_grads(policy, params, answers, method="loop")
    assert torch.allclose(J, J_loop) and torch.allclose(G, G_loop, atol=1e-6, rtol=1e-4)
    for i, a in enumerate(answers):                  # each prompt alone, its own forward and backward
        for q in params:
            q.grad = None
        lp, _, _ = completion_logprobs(policy, a)
        m = a.completion_mask.float()
        Ji = ((lp * m).sum(-1) / m.sum(-1)).mean()
        Ji.backward()
        assert float(J[i]) == pytest.approx(float(Ji.detach()), abs=1e-5)
        assert torch.allclose(G[i], flat_grad(params), atol=1e-5, rtol=1e-4)
        assert float(G[i].norm()) > 0                 # the likelihood row is never zero
    assert torch.allclose(answer_loglik(policy, answers[1:]).double(), J[1:], atol=1e-5)


def test_per_prompt_rows_under_gradient_checkpointing_equal_the_loop(policy_and_answers, monkeypatch):
    """Non-reentrant checkpointing (transformers' default; TRL turns checkpointing on) runs the
    layers' forward hooks again inside the backward: the hook path pairs only the forward's calls."""
    from retainrl.safety import estimates

    monkeypatch.setattr(estimates, "BUCKET_OVERHEAD_TOKENS", 0)     # several forward calls
    policy, answers = policy_and_answers
    params = policy.trainable_parameters()
    want_J, want_G = per_prompt_values_and_grads(policy, params, answers, method="loop")
    model = policy.model
    was_training = model.training
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    try:
        J, G = per_prompt_values_and_grads(policy, params, answers)
    finally:
        model.gradient_checkpointing_disable()
        model.train(was_training)
    assert torch.allclose(J, want_J, atol=1e-6) and torch.allclose(G, want_G, atol=1e-6, rtol=1e-4)


def test_bucket_sizes_by_hand():
    from retainrl.safety.estimates import bucket_sizes

    # overhead 4: one bucket 4 x 10 + 4 = 44; [10, 9] [3, 2]: 20 + 6 + 8 = 34; three buckets: 37
    assert bucket_sizes([10, 9, 3, 2], overhead=4) == [2, 2]
    assert bucket_sizes([10, 9, 3, 2], overhead=100) == [4]
    assert bucket_sizes([10, 9, 3, 2], overhead=0) == [1, 1, 1, 1]
    assert bucket_sizes([5, 5], overhead=0) == [2]             # a tie keeps the fewer calls
    assert bucket_sizes([], overhead=4) == []
    with pytest.raises(ValueError, match="sorted longest first"):
        bucket_sizes([2, 3])


def test_pack_rows_by_hand():
    from retainrl.policy.rollout import Rollout
    from retainrl.safety.estimates import pack_rows

    r = Rollout(torch.tensor([[0, 0, 5, 6], [0, 0, 0, 7]]), torch.tensor([[0, 0, 1, 1], [0, 0, 0, 1]]),
                torch.tensor([[8, 9, 0, 0], [8, 0, 0, 0]]), torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0]]),
                ["a", "b"], [0, 0], 1)
    s = Rollout(torch.tensor([[3, 4, 5]]), torch.tensor([[1, 1, 1]]), torch.tensor([[6, 2, 2]]),
                torch.tensor([[1, 1, 1]]), ["c"], [1], 1)
    one = pack_rows([r, s], overhead=100)                       # lengths 4, 2, 6: one bucket, longest first
    assert one.order.tolist() == [2, 0, 1] and len(one.buckets) == 1
    ids, mask, target = one.buckets[0]
    assert ids.tolist() == [[3, 4, 5, 6, 2, 2], [5, 6, 8, 9, 0, 0], [7, 8, 0, 0, 0, 0]]
    assert mask.tolist() == [[1] * 6, [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    assert target.long().tolist() == [[0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]]
    many = pack_rows([r, s], overhead=0)                        # one bucket per length, each as wide as it needs
    assert many.order.tolist() == [2, 0, 1] and [b[0].shape for b in many.buckets] == [(1, 6), (1, 4), (1, 2)]
    empty = Rollout(torch.tensor([[0]]), torch.tensor([[0]]), torch.tensor([[8]]), torch.tensor([[1]]), ["d"], [0], 1)
    with pytest.raises(ValueError, match="empty prompt"):
        pack_rows([empty])


@pytest.mark.parametrize("overhead", [0, 64])
def test_packed_log_likelihoods_equal_the_stored_layout(policy_and_answers, monkeypatch, overhead):
    """Packing (padding dropped, rows regrouped; overhead 0: a bucket per length) changes no
    log-likelihood: each row's equals completion_logprobs on the row as stored, and on the row
    widened by extra padding columns on both sides."""
    from retainrl.policy.rollout import Rollout, completion_logprobs
    from retainrl.safety import estimates

    policy, answers = policy_and_answers
    pad = torch.nn.functional.pad
    a = answers[0]
    wide = Rollout(pad(a.prompt_ids, (3, 0)), pad(a.prompt_mask, (3, 0)), pad(a.completion_ids, (0, 5)),
                   pad(a.completion_mask, (0, 5)), a.texts, a.task_index, 1)
    parts = [wide, *answers[1:]]
    monkeypatch.setattr(estimates, "BUCKET_OVERHEAD_TOKENS", overhead)
    packed = estimates.pack_rows(parts)
    assert overhead or len(packed.buckets) > 1
    with torch.no_grad():
        got = estimates.packed_logliks(policy, packed)
        want = []
        for r in answers:
            lp, _, _ = completion_logprobs(policy, r)
            m = r.completion_mask.float()
            want += ((lp * m).sum(-1) / m.sum(-1)).tolist()
    assert torch.allclose(got, torch.tensor(want)[packed.order], atol=1e-5)


def test_repeated_answers_run_once_and_weigh_by_count(policy_and_answers, monkeypatch):
    """A prompt whose stored answers repeat: the repeats are one row of the batched pass, weighted
    by their count, and J and its gradient equal the plain mean over every stored answer."""
    from retainrl.policy import rollout as rollout_mod
    from retainrl.parallel import flat_grad
    from retainrl.safety import estimates
    from retainrl.safety.estimates import distinct_rows

    policy, answers = policy_and_answers
    params = policy.trainable_parameters()
    a0, a2 = answers[0], answers[2]
    rep = [a0.select([0, 1, 0, 0]), answers[1].select([0, 0]), a2]   # answers: x,y,x,x / z,z / u,v
    for a in rep:
        a.group_size, a.temperature = 1, 1.0
    parts, owner, weight = distinct_rows(rep)
    assert owner.tolist() == [0, 0, 1, 2, 2] and weight.tolist() == [3.0, 1.0, 2.0, 1.0, 1.0]
    seen = []
    real_pack = estimates.pack_rows

    def counting(parts, *a, **kw):
        packed = real_pack(parts, *a, **kw)
        seen.append(sum(b[0].shape[0] for b in packed.buckets))
        return packed
    monkeypatch.setattr(estimates, "pack_rows", counting)
    J, G = per_prompt_values_and_grads(policy, params, rep)
    assert seen == [5]                                 # 5 distinct rows of the 8 stored answers
    real = rollout_mod.completion_logprobs
    for i, a in enumerate(rep):                        # by hand: the plain mean over all stored answers
        for q in params:
            q.grad = None
        lp, _, _ = real(policy, a)
        m = a.completion_mask.float()
        Ji = ((lp * m).sum(-1) / m.sum(-1)).mean()
        Ji.backward()
        assert float(J[i]) == pytest.approx(float(Ji.detach()), abs=1e-5)
        assert torch.allclose(G[i], flat_grad(params), atol=1e-5, rtol=1e-4)


def test_several_memories_in_one_pass_equal_each_alone(policy_and_answers, monkeypatch):
    """Two protected skills' memories (and a stand-in memory beside them) in one batched pass: the
    same values and per-prompt gradients as each memory alone, with one forward for the real ones."""
    from retainrl.safety import estimates

    policy, answers = policy_and_answers
    params = policy.trainable_parameters()
    mems = []
    for skill, ans in (("gen", answers[:2]), ("repair", answers[1:])):
        m = AnswerMemory(skill, list(range(len(ans))), len(ans), 0, 4, seed=0)
        m.answers = list(ans)
        mems.append(m)
    stand_in = LinearAnswers(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.nn.Parameter(torch.ones(2)))
    picks = [(mems[0], [1, 0]), (stand_in, [1]), (mems[1], [0, 1]), (mems[0], [])]
    alone = [mems[0].values_and_grads(policy, params, [1, 0]), None, mems[1].values_and_grads(policy, params, [0, 1])]
    calls = []
    real = estimates.packed_logliks
    monkeypatch.setattr(estimates, "packed_logliks", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    together = estimates.values_and_grads_many(policy, params, picks)
    assert len(calls) == 1                                     # one pass for both real memories
    for i in (0, 2):
        assert torch.allclose(together[i][0], alone[i][0], atol=1e-5)
        assert torch.allclose(together[i][1], alone[i][1], atol=1e-5, rtol=1e-4)
    assert together[1][0].tolist() == [1.0] and together[1][1].tolist() == [[0.0, 1.0]]   # the stand-in's own
    assert together[3][0].shape == (0,) and together[3][1].shape == (0, alone[0][1].shape[1])
    vals = estimates.values_many(policy, picks)
    assert len(calls) == 2 and torch.allclose(vals[2], alone[2][0], atol=1e-5) and vals[1].tolist() == [1.0]


# -- tiny end-to-end runs of each new constraint type --------------------------------------------
@pytest.mark.parametrize("constraint,budget", [("prompt_ll", "phase"), ("prompt_ll_subspace", "step")])
def test_tiny_run_logs_diagnostics_and_holds_to_first_order(tmp_path, constraint, budget):
    out = tmp_path / constraint
    args = ["world.n_heldout=4", "eval.max_new_tokens=24", "sampling.max_new_tokens=24", "eval.n_samples=1",
            "protocol.phases=[gen,repair]", "protocol.steps_per_phase=2", "safety.enabled=true",
            f"safety.constraint={constraint}", f"safety.budget={budget}", "safety.eps_mode=absolute",
            "safety.eps=0.0", "safety.memory_prompts=6", "safety.heldout_prompts=2", "safety.batch_prompts=3",
            "safety.memory_samples=4", "safety.diagnostics_every=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "retainrl", "train", str(ROOT / "configs" / "smoke.yaml"), *args,
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    train = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if r["kind"] == "train" and r["phase"] == 1]
    assert len(train) == 2
    for r in train:
        if r.get("update/no_signal"):   # every group's rewards equal: no update, so no safety step either
            continue
        assert r["safety/num_protected"] == 1.0
        assert "safety/memory_pass/gen" in r
        if r.get("safety/num_rows", 0) == 0:     # no gen prompt answered correctly yet: nothing to keep
            continue
        for key in ("safety/protected_share", "safety/max_abs_cos", "safety/predicted_dJ/gen",
                    "safety/realised_dJ/gen", "safety/rel_change"):
            assert key in r, key
        assert 0.0 <= r["safety/protected_share"] <= 1.0
        # first order: no row is violated by the applied step (eps = 0 or the phase budget)
        assert r.get("safety/max_violation_after", 0.0) <= 1e-6 * (1 + abs(r.get("safety/budget/gen", 0.0)))
    assert any(r.get("safety/num_rows", 0) > 0 for r in train), "no constraint row in the whole run"


def test_answer_memories_and_phase_anchor_survive_a_checkpoint(policy_and_answers):
    from retainrl.train import checkpoint

    _, answers = policy_and_answers
    tasks = {"gen": list(range(20))}
    cfg = SafetyConfig(enabled=True, diagnostics_every=1, constraint="prompt_ll", budget="phase", eps_mode="absolute",
                       memory_prompts=3, heldout_prompts=1)
    layer = SafetyLayer(cfg, tasks, None, seed=0)
    mem = layer.answer_memory("gen")
    mem.answers = [answers[0], None, answers[2], answers[1]]
    mem.refreshed_at, mem.cursor, mem.pass_rate = 4, 1, 0.5
    p = torch.nn.Parameter(torch.arange(3.0))
    layer.mark_phase(["gen"], [p])
    again = SafetyLayer(cfg, tasks, None, seed=0)
    again.load_state(checkpoint.loads(checkpoint.dumps({"safety": layer.state()}))["safety"])
    back = again.answer_memories["gen"]
    assert back.tasks == mem.tasks and back.heldout == mem.heldout and back.answers[1] is None
    for a, b in zip(mem.answers, back.answers):
        if a is not None:
            assert torch.equal(a.completion_ids, b.completion_ids) and a.task_index == b.task_index
    assert (back.refreshed_at, back.cursor, back.pass_rate) == (4, 1, 0.5)
    assert torch.equal(again.anchor, layer.anchor) and again.anchor_for == ("gen",)
    # an older checkpoint without the new keys restores the rest and leaves the anchor unset
    old = {k: v for k, v in layer.state().items() if k not in ("answer_memories", "anchor", "anchor_for")}
    fresh = SafetyLayer(cfg, tasks, None, seed=0)
    fresh.load_state(old)
    assert fresh.anchor is None and fresh.answer_memories == {}
    # an anchor that does not fit the parameters (a damaged or foreign checkpoint) is a clear error
    from retainrl.safety.layer import _anchor_values
    again.anchor = torch.zeros(5)
    with pytest.raises(ValueError, match="anchor"):
        _anchor_values(again, None, [p], "gen", [0])
