"""train.objective: the update as micro-batch loss -> accumulation -> applied update.

Invariance: one scored rollout, updated with micro_batch_prompts = 4 (one backward pass), 2
and 1 (four accumulated passes), gives the same parameters and *every* logged metric the same
(losses with global denominators are summed, token means weighted by tokens, min/max kept as
min/max). Checked to fail on the code before issue 12, which divided the summed losses and
penalties by the number of micro-batches and averaged policy/ratio_min/max.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from retainrl.baselines import make_baseline
from retainrl.config import load_config
from retainrl.parallel import flat_params
from retainrl.policy.model import ModelConfig, load_policy
from retainrl.policy.rollout import SamplingConfig, generate
from retainrl.train import objective
from retainrl.train.config import RunConfig

PROMPTS = ["def f(xs):\n    return", "Task: write the function.\ndef f(n):", "assert f(3) ==", "x = [1, 2]\n"]
GROUP = 4
# mixed rewards in groups 0, 1, 3; group 2 all equal (uninformative)
REWARDS = [1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0]


@pytest.fixture(scope="module")
def rollout():
    torch.set_num_threads(1)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    r = generate(policy, PROMPTS, n=GROUP, cfg=SamplingConfig(max_new_tokens=12), seed=3)
    r.rewards = torch.tensor(REWARDS, dtype=torch.float32)
    return r


def _run(rollout, overrides: list[str]):
    """(metrics of the second of two updates, flat trainable parameters after them)."""
    cfg = load_config(RunConfig, None, ["rl.lr=0.05", *overrides])
    torch.manual_seed(0)  # LoRA A (and the value head) start the same in every variant
    policy = load_policy(dataclasses.replace(cfg.model, threads=1, value_head=cfg.rl.algo == "ppo"))
    # SGD: the applied step is linear in the gradient, so accumulation order noise stays ~1e-9
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=cfg.rl.lr)
    method = make_baseline(cfg.method, policy, {}, cfg.sampling, cfg.seed)
    stats = [objective.update(cfg.rl, policy, opt, rollout, max_len=cfg.sampling.max_new_tokens,
                              penalty=method.penalty, step=i) for i in range(2)]
    flat = flat_params(policy.trainable_parameters())
    return stats[-1], flat


VARIANTS = {
    "grpo": [],
    "grpo-seq-kl-entropy-l2sp": ["rl.aggregation=seq_mean_token_mean", "rl.kl_coef=0.1", "rl.entropy_coef=0.01",
                                 "method.name=l2sp", "method.l2sp_lambda=3.0"],
    "grpo-2-epochs": ["rl.epochs=2", "rl.drop_uninformative=false"],
    "rloo": ["rl.algo=rloo"],
    "ppo": ["rl.algo=ppo"],
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_logged_metric_is_invariant_to_micro_batch_prompts(rollout, name):
    runs = {m: _run(rollout, [f"rl.micro_batch_prompts={m}", *VARIANTS[name]]) for m in (4, 2, 1)}
    ref_stats, ref_flat = runs[4]
    assert not ref_stats["skipped"]
    for m in (2, 1):
        stats, flat = runs[m]
        assert torch.allclose(flat, ref_flat, atol=1e-6), (m, (flat - ref_flat).abs().max())
        assert set(stats) == set(ref_stats), (m, set(stats) ^ set(ref_stats))
        for k, v in ref_stats.items():
            if isinstance(v, bool) or not isinstance(v, float) or math.isnan(v):
                assert stats[k] == v or (isinstance(v, float) and math.isnan(stats[k])), k
                continue
            assert stats[k] == pytest.approx(v, rel=1e-4, abs=1e-6), (name, m, k, stats[k], v)
    # the checked metrics are not all trivial: the losses and penalties are really there
    assert ref_stats["loss/total"] != 0.0
    if "method.name=l2sp" in VARIANTS[name]:
        assert ref_stats["method/l2sp"] > 0.0
    if name.startswith("grpo"):
        assert ref_stats["policy/ratio_min"] <= ref_stats["policy/ratio_mean"] <= ref_stats["policy/ratio_max"]


def test_the_update_picks_its_parts_through_the_registry(rollout, monkeypatch):
    """Re-registering "grpo" as RLOO's parts makes a grpo config run exactly the RLOO update: the
    objective looks its estimator and loss up by name and has no algorithm branch of its own."""
    from retainrl import rl
    from retainrl.rl import Algorithm

    rloo_stats, rloo_flat = _run(rollout, ["rl.algo=rloo"])
    grpo_stats, grpo_flat = _run(rollout, ["rl.algo=grpo"])
    assert not torch.allclose(rloo_flat, grpo_flat, atol=1e-6)  # the two updates differ
    monkeypatch.setitem(rl.ALGORITHMS, "grpo", Algorithm(advantages="rloo", policy_loss="rloo"))
    stats, flat = _run(rollout, ["rl.algo=grpo"])
    assert torch.equal(flat, rloo_flat) and stats == rloo_stats
