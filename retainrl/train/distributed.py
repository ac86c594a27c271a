"""Data parallelism under `torchrun`: every rank holds the whole (LoRA'd) model and the same
optimizer; the global batch is split across ranks, gradients are averaged before clipping.

    torchrun --nproc_per_node 4 -m retainrl train configs/x.yaml --out runs/x

What each rank does, and why the ranks cannot drift apart:
- Task sampling draws the *global* step batch on every rank from the same seeded sampler, then
  rank r keeps prompts r, r + W, r + 2W, ... (W ranks), so the sampler state is identical on
  all ranks and equal to a single-process run's. Rollouts use a per-rank seed.
- Loss denominators (tokens, sequences) are summed over ranks, so each rank's loss is its share
  of the global-batch loss and the *sum* of the ranks' gradients (one flat all-reduce, what
  DDP's bucketed all-reduce computes up to its 1/W) equals the gradient of one process on the
  global batch (tests/test_train_ddp.py), before the NaN check, clipping and the optimizer
  step. The skill-safe layer all-reduces its per-skill gradients; trigger decisions and the
  EWC Fisher are made identical on every rank.
- Limitation: PPO whitens its GAE advantages per rank, so PPO under data parallelism is not
  exactly the single-process update (GRPO and RLOO are: their groups live on one rank).
- Evaluation is sharded (task i on rank i mod W) and the counts summed.
- Only rank 0 writes metrics.jsonl, TensorBoard, summary.json and checkpoints; every rank
  resumes from the same checkpoint. After the run the ranks compare a checksum of their
  trainable parameters and fail loudly if they differ.
Backend: NCCL on CUDA, gloo on CPU (the CI test runs 2 CPU processes).
The collectives themselves (all_sum, sum_gradients, ...) live in retainrl.parallel, below
train/, because the skill-safe layer and the baselines use them too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# the collectives live at the bottom of the package (safety/ uses them too); re-exported here
from retainrl.parallel import all_sum, is_active, sum_gradients  # noqa: F401


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def setup() -> DistInfo:
    """Join the process group torchrun describes in the environment; single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        # NCCL for the CUDA tensors (gradients), gloo for the small CPU tensors (counts, checks)
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if cuda else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local)


def teardown(info: DistInfo) -> None:
    if info.active and dist.is_initialized():
        dist.destroy_process_group()


def parameters_checksum(params: list[torch.nn.Parameter]) -> float:
    return float(sum(p.detach().double().sum() + (p.detach().double() ** 2).sum() for p in params))


def ranks_agree(value: float, tol: float = 1e-9) -> bool:
    """True when `value` is the same on every rank (to a relative tolerance)."""
    if not is_active():
        return True
    t = torch.tensor([value, -value], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    hi, lo = t[0].item(), -t[1].item()
    return abs(hi - lo) <= tol * max(1.0, abs(hi))


def broadcast_parameters(params: list[torch.nn.Parameter]) -> None:
    """Every rank starts from rank 0's trainable parameters (as DDP does at construction)."""
    if not is_active():
        return
    with torch.no_grad():
        for p in params:
            dist.broadcast(p.data, src=0)
