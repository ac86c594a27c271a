"""The baselines the skill-safe layer is compared against: L2-SP, EWC, replay and the KL penalty,
hand-computed where possible, each called with explicit inputs (no trainer)."""

from __future__ import annotations

import math
import types

import pytest
import torch

from retainrl.baselines import EWC, L2SP, BASELINES, Baseline, Replay, ewc_penalty, l2sp_penalty, make_baseline
from retainrl.baselines import ewc as ewc_module
from retainrl.data.task import Task
from retainrl.train.config import MethodConfig
from retainrl.train.sampler import TaskSampler


class _Params:
    """The part of a Policy a parameter penalty uses: named trainable parameters."""

    def __init__(self, **tensors):
        self.params = {n: torch.nn.Parameter(torch.tensor(v)) for n, v in tensors.items()}

    def named_trainable(self):
        return self.params


def test_l2sp_penalty_by_hand():
    theta = {"a": torch.tensor([1.0, 2.0], requires_grad=True), "b": torch.tensor([[-1.0]], requires_grad=True)}
    anchor = {"a": torch.tensor([0.0, 1.0]), "b": torch.tensor([[1.0]])}
    loss, m = l2sp_penalty(theta, anchor, lam=0.5)
    # ||theta - anchor||^2 = 1 + 1 + 4 = 6
    assert float(m["method/l2sp"]) == 6.0 and float(loss) == 3.0
    loss.backward()  # d/dtheta lam * ||theta - anchor||^2 = 2 lam (theta - anchor)
    assert torch.equal(theta["a"].grad, torch.tensor([1.0, 1.0])) and torch.equal(theta["b"].grad, torch.tensor([[-2.0]]))


def test_l2sp_anchor_is_reset_at_every_phase_start():
    policy = _Params(w=[1.0, 1.0])
    l2 = L2SP(policy, lam=2.0)
    assert float(l2.penalty()[0]) == 0.0            # anchor = the parameters at construction
    with torch.no_grad():
        policy.params["w"] += torch.tensor([1.0, -2.0])
    assert float(l2.penalty()[0]) == 2.0 * 5.0
    l2.on_phase_start(["gen"], 1)
    assert float(l2.penalty()[0]) == 0.0
    restored = L2SP(policy, lam=2.0)
    restored.load_state({"anchor": {"w": torch.tensor([0.0, 0.0])}})
    assert float(restored.penalty()[1]["method/l2sp"]) == 4.0 + 1.0


def test_ewc_penalty_by_hand():
    theta = {"a": torch.tensor([1.0, 3.0], requires_grad=True)}
    fisher = {"a": torch.tensor([2.0, 0.5])}
    anchor = {"a": torch.tensor([0.0, 1.0])}
    loss, m = ewc_penalty(theta, fisher, anchor, lam=10.0)
    # sum F (theta - anchor)^2 = 2 * 1 + 0.5 * 4 = 4; penalty = lam / 2 * 4 = 20
    assert float(m["method/ewc"]) == 4.0 and float(loss) == 20.0
    loss.backward()  # lam * F * (theta - anchor)
    assert torch.equal(theta["a"].grad, torch.tensor([20.0, 10.0]))


def _tasks(skill: str, n: int) -> list[Task]:
    return [Task(task_id=f"{skill}/{i}", skill=skill, source="test", prompt=f"{skill} {i}")
            for i in range(n)]


def test_ewc_accumulates_the_fisher_of_earlier_skills_over_phases(monkeypatch):
    calls = []

    def fake_fisher(policy, tasks, sampling, seed, samples_per_prompt=2):
        calls.append((sorted({t.skill for t in tasks}), len(tasks), seed))
        return {"w": torch.tensor([1.0, 2.0]) * len(calls)}

    monkeypatch.setattr(ewc_module, "estimate_fisher", fake_fisher)
    policy = _Params(w=[0.0, 0.0])
    tasks = {s: _tasks(s, 10) for s in ("gen", "repair", "reason")}
    ewc = EWC(policy, lam=2.0, prompts=3, train_tasks=tasks, sampling=None, seed=0)
    ewc.on_phase_start([], 0)
    assert ewc.penalty() is None and calls == []   # nothing learnt yet: no penalty
    ewc.on_phase_start(["gen"], 1)
    with torch.no_grad():
        policy.params["w"] += torch.tensor([1.0, 1.0])
    ewc.on_phase_start(["gen", "repair"], 2)        # F = F1 + F2, anchor = the parameters now
    assert [c[:2] for c in calls] == [(["gen"], 3), (["gen", "repair"], 6)]
    assert calls[0][2] != calls[1][2]                # a fresh seed per phase
    assert torch.equal(ewc.fisher["w"], torch.tensor([3.0, 6.0]))
    assert float(ewc.penalty()[0]) == 0.0
    with torch.no_grad():
        policy.params["w"] += torch.tensor([1.0, -2.0])
    assert float(ewc.penalty()[1]["method/ewc"]) == 3.0 * 1 + 6.0 * 4


def test_replay_draws_its_fraction_from_earlier_skills():
    tasks = {s: _tasks(s, 20) for s in ("gen", "repair", "reason")}
    replay = Replay(0.25)
    sampler = TaskSampler(tasks, seed=0)
    batch = sampler.sample(["reason"], 8, replay_skills=["gen", "repair"], replay_fraction=replay.replay_fraction)
    assert [t.skill for t in batch[:6]] == ["reason"] * 6
    assert {t.skill for t in batch[6:]} <= {"gen", "repair"} and len(batch) == 8
    assert replay.penalty() is None
    with pytest.raises(ValueError, match="replay fraction"):
        Replay(1.0)


def test_registry_builds_each_baseline_from_the_method_config():
    policy = _Params(w=[0.0])
    kinds = {name: type(make_baseline(MethodConfig(name=name), policy, {}, None, 0)) for name in BASELINES}
    assert kinds == {"plain": Baseline, "replay": Replay, "l2sp": L2SP, "ewc": EWC}
    assert make_baseline(MethodConfig(name="replay", replay_fraction=0.5), policy, {}, None, 0).replay_fraction == 0.5
    with pytest.raises(KeyError, match="unknown method"):
        make_baseline(types.SimpleNamespace(name="si"), policy, {}, None, 0)


def test_kl_penalty_in_the_update_is_the_k3_mean_to_the_adapter_disabled_reference():
    """objective.micro_batch_loss with kl_coef > 0: policy/ref_kl and loss/kl equal the token mean of
    k3 = exp(ref - logp) - (ref - logp) - 1 computed here from the two policies' log-probs; zero
    while the adapter is the identity (LoRA B = 0)."""
    from retainrl.config import load_config
    from retainrl.policy.model import ModelConfig, load_policy
    from retainrl.policy.rollout import SamplingConfig, completion_logprobs, generate
    from retainrl.train import objective
    from retainrl.train.config import RunConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    r = generate(policy, ["def f(x):", "assert f(1) =="], n=2, cfg=SamplingConfig(max_new_tokens=8), seed=0)
    r.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0])
    cfg = load_config(RunConfig, None, ["rl.kl_coef=0.5", "rl.micro_batch_prompts=2"])

    def kl_metrics():
        batch = objective.prepare_batch(cfg.rl, policy, r, max_len=8, has_penalty=False)
        _, m, _ = objective.micro_batch_loss(cfg.rl, policy, batch, list(range(4)))
        return m

    m0 = kl_metrics()
    assert m0["policy/ref_kl"] == 0.0 and m0["loss/kl"] == 0.0
    with torch.no_grad():
        for n, p in policy.named_trainable().items():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    m = kl_metrics()
    with torch.no_grad():
        lp = completion_logprobs(policy, r)[0]
        with policy.reference():
            ref = completion_logprobs(policy, r)[0]
    mask = r.completion_mask.bool()
    x = (ref - lp)[mask].double()
    k3 = float((torch.exp(x) - x - 1).mean())
    assert k3 > 1e-6                                                  # the adapter really moved the policy
    assert m["policy/ref_kl"] == pytest.approx(k3, rel=1e-4)
    assert m["loss/kl"] == pytest.approx(k3, rel=1e-4)                # token_mean over the whole batch
    assert m["loss/total"] == pytest.approx(m["loss/policy"] + 0.5 * k3, rel=1e-4)
    assert not math.isnan(m["policy/ref_kl_max"]) and m["policy/ref_kl_max"] >= k3
