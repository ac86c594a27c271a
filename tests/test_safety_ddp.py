"""Distributed skill-safe step: under torch.distributed (gloo, 2 CPU processes) the per-skill
gradients are all-reduced before projection, so both ranks apply the same update, equal to a
single process on the same global batch."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from retainrl.parallel import allreduce_mean, flat_grad, flat_params
from retainrl.safety.layer import safe_step

STEPS = 3


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _data(seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(8, 6, generator=g), torch.randn(8, 3, generator=g)


def _losses(model, x, y):
    out = model(x)  # target skill: column 0; protected skills: columns 1 and 2 (conflicting)
    return ((out[:, 0] - y[:, 0]) ** 2).mean(), [((out[:, 1] + y[:, 0]) ** 2).mean(), ((out[:, 2] - y[:, 2]) ** 2).mean()]


def _grads(model, x, y):
    params = list(model.parameters())
    target, protected = _losses(model, x, y)
    gs = []
    for loss in [target, *protected]:
        for p in params:
            p.grad = None
        loss.backward(retain_graph=True)
        gs.append(flat_grad(params))
    return gs[0], torch.stack(gs[1:])


def _run(rank: int, world: int, space: str, port: int, out):
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = _model()
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=0.05)
    x, y = _data(1)
    if world > 1:  # each rank holds half of the global batch
        x, y = x[rank * 4:(rank + 1) * 4], y[rank * 4:(rank + 1) * 4]
    for _ in range(STEPS):
        g, G = _grads(model, x, y)
        g, G = allreduce_mean(g), allreduce_mean(G)
        safe_step(params, opt, g, G, 0.0, "absolute", space, "exact")
    out[rank] = flat_params(params)
    if world > 1:
        dist.destroy_process_group()


def _worker(rank, world, space, port, q):
    out = {}
    _run(rank, world, space, port, out)
    q.put((rank, out[rank].tolist()))  # plain data: shared-memory tensors die with the child


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("space", ["step", "grad"])
def test_two_ranks_stay_identical_and_match_one_process(space):
    single: dict = {}
    _run(0, 1, space, 0, single)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, space, port, q)) for r in range(2)]
    for p in procs:
        p.start()
    results = {r: torch.tensor(v) for r, v in (q.get(timeout=120) for _ in procs)}
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert torch.equal(results[0], results[1]), "ranks diverged"
    assert torch.allclose(results[0], single[0], atol=1e-6), "distributed update differs from one process"
    assert not torch.allclose(single[0], flat_params(list(_model().parameters()))), "nothing was trained"
