"""Data-parallel training (train/distributed.py) on 2 CPU processes with gloo.

1. The update itself: two ranks, each holding half of the prompt groups of one scored rollout,
   apply the same parameters as one process on the whole rollout (global loss denominators,
   gradients averaged before clipping), for GRPO with token-mean and sequence-mean
   aggregation and for RLOO, with the uninformative-group filter on.
2. End to end: `torchrun --nproc_per_node 2 -m retainrl train` on the smoke config finishes,
   writes one metrics line per event (rank 0 only) and the ranks end with identical adapters.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from retainrl.baselines import make_baseline
from retainrl.config import load_config
from retainrl.parallel import flat_params
from retainrl.policy.model import ModelConfig, load_policy
from retainrl.policy.rollout import SamplingConfig, generate
from retainrl.train import objective
from retainrl.train.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["def f(xs):\n    return", "Task: write the function.\ndef f(n):", "assert f(3) ==", "x = [1, 2]\n"]
GROUP = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rollout():
    torch.set_num_threads(1)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    r = generate(policy, PROMPTS, n=GROUP, cfg=SamplingConfig(max_new_tokens=12), seed=3)
    # mixed rewards in groups 0, 1, 3; group 2 all equal (uninformative, filtered out)
    r.rewards = torch.tensor([1, 0, 0, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0], dtype=torch.float32)
    return r


def _update(rank: int, world: int, port: int, overrides: list[str], rollout) -> list[float]:
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    cfg = load_config(RunConfig, None, ["rl.micro_batch_prompts=1", "rl.lr=0.5", *overrides])
    torch.manual_seed(0)  # LoRA A is random: the same start everywhere (the trainer also broadcasts)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    # SGD: the applied step is linear in the gradient, so float-order noise stays at 1e-9 (Adam
    # would blow the noise of near-zero gradients up to the learning rate)
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=cfg.rl.lr)
    method = make_baseline(cfg.method, policy, {}, cfg.sampling, cfg.seed)
    if world > 1:  # this rank's prompt groups: r, r + W, ...
        groups = list(range(rank, len(PROMPTS), world))
        rollout = rollout.select([g * GROUP + j for g in groups for j in range(GROUP)])
    for _ in range(2):
        objective.update(cfg.rl, policy, opt, rollout, max_len=cfg.sampling.max_new_tokens, penalty=method.penalty)
    flat = flat_params(policy.trainable_parameters())
    if world > 1:
        dist.destroy_process_group()
    return flat.tolist()


def _worker(rank, world, port, overrides, rollout, q):
    q.put((rank, _update(rank, world, port, overrides, rollout)))


@pytest.mark.parametrize("overrides", [["rl.aggregation=token_mean"], ["rl.aggregation=seq_mean_token_mean"],
                                       ["rl.algo=rloo"]], ids=["grpo-token", "grpo-seq", "rloo"])
def test_two_ranks_apply_the_single_process_update(overrides):
    rollout = _rollout()
    single = torch.tensor(_update(0, 1, 0, overrides, rollout))
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, overrides, rollout, q)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    a, b = torch.tensor(got[0]), torch.tensor(got[1])
    assert torch.equal(a, b), "ranks diverged"
    base = torch.tensor(_update(0, 1, 0, ["rl.lr=1e-12", *overrides], rollout))
    assert (single - base).abs().max() > 1e-4  # the update moved the adapter: a real comparison
    assert torch.allclose(a, single, atol=1e-6), (a - single).abs().max()


# the skill-safe default (prompt_ll rows, phase budget) in phase 2: memories, rows and the held-out
# diagnostics on every rank, every step
SAFE = ["safety.enabled=true", "safety.memory_prompts=8", "safety.heldout_prompts=2", "safety.batch_prompts=3",
        "safety.diagnostics_every=1"]


@pytest.mark.parametrize("extra", [[], SAFE], ids=["plain", "skill-safe"])
def test_torchrun_two_ranks_end_to_end(tmp_path, extra):
    out = tmp_path / "ddp"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "retainrl", "train", str(ROOT / "configs" / "smoke.yaml"), "protocol.phases=[gen,repair]",
           "world.n_heldout=1", "sampling.max_new_tokens=24", "eval.max_new_tokens=24", "sandbox_workers=1",
           *extra, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ddp_world_size"] == 2 and summary["ddp_ranks_identical"] is True
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4]  # one line per step: rank 0 only
    assert all(r["tokens"] > 0 for r in train)
    evals = [r for r in recs if r["kind"] == "eval"]
    # one held-out task per skill: rank 1's shards are empty, and the merge still counts n = 1
    assert len(evals) == 3 * 3 and all(r["n"] == 1 for r in evals)
    assert proc.stdout.count("run directory:") == 1
    if extra:   # both ranks projected on the same rows (identical adapters above), and rows there were
        protected = [r for r in train if r["phase"] == 1]
        assert all(r["safety/num_protected"] == 1.0 for r in protected)
        assert any(r.get("safety/rows/gen", 0) > 0 for r in protected), protected
        assert all("safety/predicted_dJ/gen" in r and "safety/budget/gen" in r
                   for r in protected if r.get("safety/rows/gen", 0) > 0)
