"""Distributed skill-safe step: under torch.distributed (gloo, 2 CPU processes) the per-skill
gradients are all-reduced before projection, so both ranks apply the same update, equal to a
single process on the same global batch; the default constraint's per-prompt rows are split
over the ranks (each runs half of them) and summed, with the same update as one process."""

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


def _worker(rank, world, port, q, space):
    out = {}
    _run(rank, world, space, port, out)
    q.put((rank, out[rank].tolist()))  # plain data: shared-memory tensors die with the child


def _finish(rank: int, world: int, q, out):
    """End a rank of a run: leave the process group; one process returns `out`, a spawned rank puts
    it on the queue (plain data: shared-memory tensors die with the child)."""
    if world > 1:
        dist.destroy_process_group()
    if q is None:
        return out
    q.put((rank, out))


def _two_ranks(target, *args, timeout: float = 300) -> dict:
    """rank -> what target(rank, 2, port, q, *args) put on the queue, from two spawned gloo ranks
    (both must exit cleanly)."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=target, args=(r, 2, port, q, *args)) for r in range(2)]
    for p in procs:
        p.start()
    got = dict(q.get(timeout=timeout) for _ in procs)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return got


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("space", ["step", "grad"])
def test_two_ranks_stay_identical_and_match_one_process(space):
    single: dict = {}
    _run(0, 1, space, 0, single)
    results = {r: torch.tensor(v) for r, v in _two_ranks(_worker, space, timeout=120).items()}
    assert torch.equal(results[0], results[1]), "ranks diverged"
    assert torch.allclose(results[0], single[0], atol=1e-6), "distributed update differs from one process"
    assert not torch.allclose(single[0], flat_params(list(_model().parameters()))), "nothing was trained"


# -- the answer-likelihood rows of the default constraint, split over ranks ---------------------------
def _answer_layer(n_prompts: int = 5):
    from retainrl.policy.model import ModelConfig, load_policy
    from retainrl.policy.rollout import SamplingConfig, generate
    from retainrl.safety.estimates import AnswerMemory
    from retainrl.safety.layer import SafetyLayer
    from retainrl.train.config import SafetyConfig

    torch.manual_seed(0)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    with torch.no_grad():
        for n, q in policy.named_trainable().items():
            if "lora_B" in n:
                q.normal_(0, 0.02)
    prompts = ["def f(x):", "assert f(", "x = 1\ny =", "def g(xs):\n    return", "print("][:n_prompts]
    r = generate(policy, prompts, n=2, cfg=SamplingConfig(max_new_tokens=6), seed=0)
    cfg = SafetyConfig(enabled=True, constraint="prompt_ll", budget="phase", eps=0.0, eps_mode="absolute",
                       memory_prompts=len(prompts), heldout_prompts=0, batch_prompts=len(prompts),
                       refresh_every=1000, diagnostics_every=1)
    layer = SafetyLayer(cfg, {"gen": list(range(len(prompts)))}, None, seed=0)
    mem = AnswerMemory("gen", list(range(len(prompts))), len(prompts), 0, 2, seed=0)
    mem.tasks, mem.heldout = list(range(len(prompts))), []
    for i in range(len(prompts)):
        a = r.select([2 * i, 2 * i + 1])
        a.group_size, a.temperature, a.task_index = 1, 1.0, [i, i]
        mem.answers[i] = a
    mem.refreshed_at = 0
    layer.answer_memories["gen"] = mem
    return policy, layer


def _answer_run(rank: int, world: int, port: int, q, n_prompts: int = 5):
    from retainrl.safety import estimates

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    policy, layer = _answer_layer(n_prompts)
    params = policy.trainable_parameters()
    rows = []
    real = estimates.packed_logliks
    estimates.packed_logliks = lambda pol, packed, *a, **kw: rows.append(int(packed.order.numel())) or \
        real(pol, packed, *a, **kw)
    opt = torch.optim.SGD(params, lr=0.5)
    gen = torch.Generator().manual_seed(1)
    metrics = []
    try:
        for step in range(2):
            for p in params:   # the same target gradient on every rank (a stand-in for the all-reduced one)
                p.grad = torch.randn(p.shape, generator=gen) * 0.05
            metrics.append(layer.step(params, opt, policy, None, step + 1, ["gen"]))
    finally:   # the one-process run is in pytest's own process
        estimates.packed_logliks = real
    return _finish(rank, world, q, (flat_params(params).tolist(), rows, [m.get("safety/num_active", 0.0) for m in metrics]))


def test_answer_rows_split_over_ranks_match_one_process():
    """Two ranks each run half of the per-prompt rows (parallel.my_share) and sum them: the same
    update as one process running all rows, identical on both ranks."""
    single, single_rows, active = _answer_run(0, 1, 0, None)
    # one process: per step the rows' pass (then, on the first, the anchor values) and the realised pass, 10 rows
    # each (5 prompts x 2 distinct answers); the rows bind, so the projection moved the step
    assert single_rows == [10] * 5 and min(active) > 0
    got = _two_ranks(_answer_run)
    (a, rows_a, _), (b, rows_b, _) = got[0], got[1]
    assert torch.equal(torch.tensor(a), torch.tensor(b)), "ranks diverged"
    assert torch.allclose(torch.tensor(a), torch.tensor(single), atol=1e-6)
    # the gradient passes split the 5 prompts 3 + 2 (prompts 0, 2, 4 and 1, 3); the value passes do not
    assert rows_a == [6, 10, 10, 6, 10] and rows_b == [4, 10, 10, 4, 10]   # rows, anchor, realised; rows, realised


def test_one_answer_row_over_two_ranks_does_not_hang():
    """One memory prompt, two ranks: rank 1 has no row to run and still joins the sum."""
    single, _, _ = _answer_run(0, 1, 0, None, 1)
    got = _two_ranks(_answer_run, 1)
    assert torch.equal(torch.tensor(got[0][0]), torch.tensor(got[1][0]))
    assert torch.allclose(torch.tensor(got[0][0]), torch.tensor(single), atol=1e-6)
    # rank 0: rows, anchor, realised; rows, realised. rank 1 runs no gradient pass, only the value passes
    assert len(got[0][1]) == 5 and len(got[1][1]) == 3


def _refresh_run(rank: int, world: int, port: int, q, n_prompts: int = 5, n_held: int = 2):
    from retainrl.data.world import WorldConfig, make_world
    from retainrl.policy.model import ModelConfig, load_policy
    from retainrl.policy.rollout import SamplingConfig
    from retainrl.safety import estimates
    from retainrl.verify import Sandbox

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    tasks = make_world(WorldConfig(seed=0, n_train=40, n_heldout=4))["gen"]["train"]
    mem = estimates.AnswerMemory("gen", tasks, n_prompts, n_held, 4, seed=0)
    generated = []
    real = estimates.generate
    estimates.generate = lambda pol, prompts, *a, **kw: generated.append(len(prompts)) or real(pol, prompts, *a, **kw)
    with Sandbox(workers=1) as sb:
        mem.refresh(policy, sb, SamplingConfig(max_new_tokens=48), seed=3, step=0)
    every = mem.tasks + mem.heldout
    answers = {p: a.completion_ids[a.completion_mask.bool()].tolist() for p, a in enumerate(mem.answers) if a is not None}
    for p, a in enumerate(mem.answers):   # stored under its own prompt: the prompt's tokens and index
        if a is not None:
            assert a.task_index == [p] * a.completion_ids.shape[0]
            assert policy.tokenizer.decode(a.prompt_ids[0][a.prompt_mask[0].bool()]) == every[p].prompt
    if world > 1:
        dist.destroy_process_group()
    q.put((rank, (answers, generated, mem.pass_rate)))


def test_memory_refresh_split_over_ranks_gives_every_rank_the_same_memory():
    """Two ranks each generate and verify half of the memory's 7 prompts and gather the answers:
    both end with the same memory, the union of their halves."""
    got = _two_ranks(_refresh_run)
    (a0, gen0, pass0), (a1, gen1, pass1) = got[0], got[1]
    assert gen0 == [4] and gen1 == [3]                       # prompts 0, 2, 4, 6 and 1, 3, 5
    assert a0 == a1 and pass0 == pass1                       # the same memory on both ranks
    assert a0, "no prompt answered: the test compares nothing"
    assert any(p % 2 for p in a0)                             # rank 0 holds answers that rank 1 generated


def test_memory_refresh_of_one_prompt_over_two_ranks_does_not_hang():
    """One memory prompt, two ranks: rank 1 has nothing to generate and still joins the gather."""
    got = _two_ranks(_refresh_run, 1, 0)
    assert got[0][1] == [1] and got[1][1] == []               # only rank 0 generated
    assert got[0][0] == got[1][0] and got[0][2] == got[1][2]


# -- the activation subspaces (safety.act_subspace), covariances split over ranks ---------------------
def _bases_run(rank: int, world: int, port: int, q):
    from retainrl.safety.subspace import build_subspaces

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    policy, layer = _answer_layer(5)
    mem = layer.answer_memories["gen"]
    sub = build_subspaces(policy, [[mem.answers[i] for i in range(5)]], "both", 0.7, 1.0)
    # the projectors are what must agree (eigenvector signs are arbitrary); k per module too
    return _finish(rank, world, q, {name: ((U @ U.T).tolist(), (V @ V.T).tolist())
                                    for name, (U, V) in list(sub.bases.items())[:3]})


def test_activation_bases_split_over_ranks_match_one_process():
    single = _bases_run(0, 1, 0, None)
    both = _two_ranks(_bases_run, timeout=240)
    for rank in (0, 1):
        assert set(both[rank]) == set(single)
        for name, (px, pg) in single.items():
            assert torch.allclose(torch.tensor(both[rank][name][0]), torch.tensor(px), atol=1e-6)
            assert torch.allclose(torch.tensor(both[rank][name][1]), torch.tensor(pg), atol=1e-6)
    assert both[0] == both[1]  # bit-identical across ranks: the eigenvectors of the same summed matrices
