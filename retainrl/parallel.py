"""Collectives and flat parameter vectors: the bottom-level helpers that train/ and safety/ share.

Nothing here knows about the trainer. Under torch.distributed (torchrun) the reductions run
over every rank; in a single process they are the identity, so callers never branch on it.

Flat vectors: a list of parameters is packed as one (d,) vector, parameter after parameter in
list order, each flattened row-major (`pack`); `unpack` is its inverse on the same list. The
skill-safe projection works on these vectors; gradients are all-reduced as one of them.

Sharded parameters (FSDP2 `fully_shard`: each parameter and its .grad are DTensors of which a
rank holds one shard): flat_grad / flat_params / set_grads / set_params work on this rank's
local shards, so a flat vector is this rank's piece of the global one (the pieces of all ranks
together are a permutation of it, so a sum over d of a product of two such vectors is the local
sum all-reduced: `all_sum_tensor`). FSDP's reduce-scatter has already averaged .grad over the
ranks, so `mean_grad` leaves a sharded gradient alone where it all-reduces a replicated one.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed support: nothing is ever sharded
    DTensor = ()


# ----------------------------------------------------------------------------------------
# collectives
# ----------------------------------------------------------------------------------------
def is_active() -> bool:
    """True under an initialised process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def my_share(n: int) -> list[int]:
    """The indices of n work items this rank computes when ranks split them: r, r + W, r + 2W, ...
    (all of them in a single process)."""
    if not is_active():
        return list(range(n))
    return list(range(dist.get_rank(), n, dist.get_world_size()))


def all_gather_objects(obj) -> list:
    """Every rank's picklable `obj`, in rank order ([obj] in a single process). Ranks of one job
    trust each other: this pickles, so it is never used on data from outside the job."""
    if not is_active():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _all_reduce_list(values: list[float], op) -> list[float]:
    if not is_active():
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=op)
    return t.tolist()


def all_sum(values: list[float]) -> list[float]:
    """Elementwise sum over ranks of a list of numbers (identity in a single process)."""
    return _all_reduce_list(values, dist.ReduceOp.SUM)


def all_max(values: list[float]) -> list[float]:
    """Elementwise maximum over ranks (identity in a single process); min(x) = -all_max(-x)."""
    return _all_reduce_list(values, dist.ReduceOp.MAX)


def all_sum_tensor(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks of a tensor (a new tensor; identity in a single process)."""
    if is_active():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def allreduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean over ranks of a tensor (a new tensor; identity in a single process)."""
    if is_active():
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def is_sharded(params) -> bool:
    """Whether the parameters are DTensors (FSDP2's fully_shard): flat vectors are local shards."""
    return any(_is_dtensor(p) for p in params)


def mean_grad(flat: torch.Tensor, params) -> torch.Tensor:
    """The mean over ranks of a flat gradient of `params` computed by every rank: all-reduced for
    replicated parameters (under DDP a backward through the unwrapped model is not reduced), as
    it is for sharded ones (FSDP's reduce-scatter averaged it during the backward)."""
    return flat if is_sharded(params) else allreduce_mean(flat)


def sum_gradients(params: list[torch.nn.Parameter]) -> None:
    """p.grad <- sum over ranks of p.grad, as one flat all-reduce (a missing grad counts as 0).

    With losses divided by *global* denominators (tokens or sequences of the whole batch) the
    sum of the ranks' gradients is the gradient of one process on the global batch."""
    if not is_active():
        return
    flat = pack(grads_or_zeros(params))
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    set_grads(params, flat)


# ----------------------------------------------------------------------------------------
# flat vectors
# ----------------------------------------------------------------------------------------
def pack(tensors, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(d,) concatenation of the flattened tensors (in `dtype` when given, else their own)."""
    return torch.cat([t.reshape(-1) if dtype is None else t.reshape(-1).to(dtype) for t in tensors])


def unpack(flat: torch.Tensor, like) -> list[torch.Tensor]:
    """Inverse of `pack` on tensors shaped (and typed) like `like`: views of `flat`, cast."""
    n_total = sum(p.numel() for p in like)
    if flat.numel() != n_total:
        raise ValueError(f"flat vector has {flat.numel()} entries, the parameters {n_total}")
    out, offset = [], 0
    for p in like:
        n = p.numel()
        out.append(flat[offset:offset + n].view_as(p).to(p.dtype))
        offset += n
    return out


def _is_dtensor(t) -> bool:
    return isinstance(t, DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor (a view of its storage), else the tensor itself."""
    return t.to_local() if _is_dtensor(t) else t


def grads_or_zeros(params) -> list[torch.Tensor]:
    """Each parameter's .grad (its local shard when sharded), zeros where it is None."""
    return [_local(p.grad) if p.grad is not None else torch.zeros_like(_local(p.detach())) for p in params]


def flat_grad(params) -> torch.Tensor:
    """(d,) float32 gradient of `params` (zeros where .grad is None; local shards when sharded)."""
    return pack(grads_or_zeros(params), torch.float32)


def flat_params(params) -> torch.Tensor:
    """(d,) float32 detached values of `params` (local shards when sharded)."""
    return pack([_local(p.detach()) for p in params], torch.float32)


def set_grads(params, flat: torch.Tensor) -> None:
    """Each p.grad <- its piece of `flat` (a fresh tensor, p's dtype; a DTensor of p's layout when sharded)."""
    for p, piece in zip(params, unpack(flat, [_local(p.detach()) for p in params])):
        if _is_dtensor(p):
            p.grad = DTensor.from_local(piece.clone(), p.device_mesh, p.placements, run_check=False,
                                        shape=p.shape, stride=p.stride())
        else:
            p.grad = piece.clone()


@torch.no_grad()
def set_params(params, flat: torch.Tensor) -> None:
    """Each parameter's values (its local shard when sharded) <- its piece of `flat`, in place."""
    locals_ = [_local(p) for p in params]
    for t, piece in zip(locals_, unpack(flat, locals_)):
        t.copy_(piece)
