"""The activation-subspace projection of a LoRA step (safety/subspace.py): the energy rule by hand,
the projection's exactness (V^T dW U = 0 for the whole finite step), the input-only ablation
killing dB, covariances invariant to repeated answers and padding, the layer's use of it inside a
tiny run, and its bases surviving a checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retainrl.safety.subspace import (LoraSubspaces, basis, build_subspaces, col_projector, covariances,
                                      lora_modules, project_lora)
from retainrl.train.config import SafetyConfig

ROOT = Path(__file__).resolve().parents[1]


def test_energy_rule_by_hand():
    C = torch.diag(torch.tensor([1.0, 4.0, 2.0, 3.0]))           # sorted energies 4, 3, 2, 1 of 10
    assert basis(C, 0.4).shape == (4, 1)                          # 0.4 reached by the first
    assert basis(C, 0.5).shape == (4, 2)                          # 0.4 < 0.5 <= 0.7
    assert basis(C, 1.0).shape == (4, 4)
    assert basis(C, 0.95, max_frac=0.5).shape == (4, 2)           # capped at half the space
    top = basis(C, 0.5)
    assert torch.allclose(top.abs(), torch.eye(4, dtype=torch.float64)[:, [1, 3]])  # e_2, then e_4
    assert basis(torch.zeros(3, 3), 0.9).shape == (3, 0)          # no energy: nothing to protect
    P = col_projector(torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]], dtype=torch.float64))
    assert torch.allclose(P, torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)))


def _random_lora(seed=0, n_in=40, n_out=30, r=8, kx=15, kg=12):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    A, B, dA, dB = rnd(r, n_in), rnd(n_out, r), rnd(r, n_in), rnd(n_out, r)
    U = torch.linalg.qr(rnd(n_in, kx))[0]
    V = torch.linalg.qr(rnd(n_out, kg))[0]
    return A, B, dA, dB, U, V


def test_both_leaves_the_protected_block_alone():
    A, B, dA, dB, U, V = _random_lora()                           # k_x = 15 >= r = 8: Q_A = I
    pA, pB = project_lora(dA, dB, A, B, U, V)
    W = lambda A_, B_: B_ @ A_  # noqa: E731
    change = W(A + pA, B + pB) - W(A, B)                          # the whole finite step, second order included
    assert float((V.T @ change @ U).abs().max()) < 1e-10          # exact when k_x >= r (or k_g >= r)
    assert float((V.T @ (W(A + dA, B + dB) - W(A, B)) @ U).abs().max()) > 1e-2  # the raw step does touch it
    assert float(pB.norm()) > 0.3 * float(dB.norm()) and float(pA.norm()) > 0.3 * float(dA.norm())  # both learn
    again = project_lora(pA, pB, A, B, U, V)                      # a projector: idempotent
    assert torch.allclose(again[0], pA, atol=1e-10) and torch.allclose(again[1], pB, atol=1e-10)
    # an orthogonal projector on the flat step: the removed part is orthogonal to what is kept
    removed = torch.cat([(dA - pA).reshape(-1), (dB - pB).reshape(-1)])
    kept = torch.cat([pA.reshape(-1), pB.reshape(-1)])
    assert abs(float(removed @ kept)) < 1e-8 * float(kept.norm() * removed.norm())


def test_small_subspaces_are_protected_to_first_order():
    A, B, dA, dB, U, V = _random_lora(kx=3, kg=3)                 # both below r = 8
    pA, pB = project_lora(dA, dB, A, B, U, V)
    first = pB @ A + B @ pA                                       # the first-order change of W
    assert float((V.T @ first @ U).abs().max()) < 1e-10
    second = V.T @ (pB @ pA) @ U                                  # the second-order term is not removed here
    assert float(second.abs().max()) > 1e-3


def test_input_only_is_gpm_and_stops_b_learning():
    A, B, dA, dB, U, _ = _random_lora()
    pA, pB = project_lora(dA, dB, A, B, U, None)
    change = (B + pB) @ (A + pA) - B @ A
    assert float((change @ U).abs().max()) < 1e-10                 # dW U = 0
    assert float(pB.norm()) < 1e-10                                # rank(A U) = r: B's step is gone
    # with V = the whole output space, "both" is the input-only rule
    both = project_lora(dA, dB, A, B, U, torch.eye(B.shape[0], dtype=torch.float64))
    assert torch.allclose(both[0], pA, atol=1e-10) and torch.allclose(both[1], pB, atol=1e-10)


def test_flat_layout_projects_each_module_and_passes_the_rest():
    A, B, dA, dB, U, V = _random_lora(n_in=6, n_out=5, r=2, kx=2, kg=2)
    names = ["m.lora_A.default.weight", "m.lora_B.default.weight", "value_head.w"]
    shapes = [A.shape, B.shape, torch.Size([3])]
    sub = LoraSubspaces(names, shapes, {"m": (U, V)})
    theta = torch.cat([A.reshape(-1), B.reshape(-1), torch.zeros(3, dtype=torch.float64)])
    step = torch.cat([dA.reshape(-1), dB.reshape(-1), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)])
    out = sub.project(step, theta)
    pA, pB = project_lora(dA, dB, A, B, U, V)
    assert torch.allclose(out[:12], pA.reshape(-1)) and torch.allclose(out[12:22], pB.reshape(-1))
    assert out[22:].tolist() == [1.0, 2.0, 3.0]


def test_one_sided_keeps_a_module_whole_only_where_the_removed_part_helps_every_skill():
    A, B, dA, dB, U, V = _random_lora(n_in=6, n_out=5, r=2, kx=2, kg=2)
    A2, B2, dA2, dB2, _, _ = _random_lora(n_in=6, n_out=5, r=2, kx=2, kg=2, seed=1)
    names = ["m.lora_A.default.weight", "m.lora_B.default.weight", "n.lora_A.default.weight", "n.lora_B.default.weight"]
    sub = LoraSubspaces(names, [A.shape, B.shape, A2.shape, B2.shape], {"m": (U, V), "n": (U, V)})
    theta = torch.cat([A.reshape(-1), B.reshape(-1), A2.reshape(-1), B2.reshape(-1)])
    step = torch.cat([dA.reshape(-1), dB.reshape(-1), dA2.reshape(-1), dB2.reshape(-1)])
    two = sub.project(step, theta)
    removed = step - two                                   # (d,): what the two-sided projection takes out
    m, n = slice(0, 22), slice(22, 44)
    # skill 1 is helped by m's removed part and hurt by n's; skill 2 is helped by both
    h1 = torch.zeros_like(step); h1[m] = removed[m]; h1[n] = -removed[n]
    h2 = removed.clone()
    out = sub.project(step, theta, torch.stack([h1, h2]))
    assert torch.equal(out[m], step[m]) and torch.allclose(out[n], two[n]) and sub.kept_whole == 1
    out = sub.project(step, theta, torch.stack([-h2]))    # hurts the one skill everywhere: all projected
    assert torch.allclose(out, two) and sub.kept_whole == 0
    out = sub.project(step, theta, torch.stack([h2]))     # helps it everywhere: the step passes whole
    assert torch.equal(out, step) and sub.kept_whole == 2


def test_one_sided_test_directions_are_the_skills_objective_gradients():
    """The layer's rows are loss gradients (-grad J): the one-sided test must use +grad J, and fall
    back to two-sided while a protected skill has no rows."""
    from retainrl.safety.layer import Constraints, one_sided_helps

    v, w = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 0.5, 0.0])
    G = torch.stack([-v, -v, -w])        # two loss rows of gen, one of repair
    cons = Constraints(G=G, eps=torch.zeros(3), eps_mode="absolute", owners=["gen", "gen", "repair"])
    assert torch.equal(one_sided_helps(cons, ["gen", "repair"]), torch.stack([v, w]))
    cons.skill_rows = {"gen": -2 * v}    # a builder's own per-skill row wins over the mean of the rows
    assert one_sided_helps(cons, ["gen", "repair"]) is None          # repair has no skill row: two-sided
    assert torch.equal(one_sided_helps(cons, ["gen"]), (2 * v)[None])
    assert one_sided_helps(Constraints(G=torch.zeros(0, 3), eps=torch.zeros(0), eps_mode="absolute", owners=[]),
                           ["gen"]) is None


@pytest.fixture(scope="module")
def policy_and_answers():
    from tests.test_safety_constraints import policy_and_answers as fixture

    return fixture.__wrapped__()


@pytest.mark.parametrize("overhead", [0, 64])
def test_covariances_weigh_prompts_not_rows_and_ignore_padding(policy_and_answers, monkeypatch, overhead):
    """overhead 0: the answers in a bucket per row length (several forward calls, one backward)."""
    from retainrl.safety import estimates

    monkeypatch.setattr(estimates, "BUCKET_OVERHEAD_TOKENS", overhead)
    policy, answers = policy_and_answers
    mods = lora_modules(policy.model)
    assert mods and all(A.weight.shape[0] == B.weight.shape[1] for A, B in mods.values())
    one = covariances(policy, [answers[1]], mods)                   # one answer
    twice = answers[1].select([0, 0])                               # the same answer twice: one row, weight 2
    twice.task_index = [1, 1]
    two = covariances(policy, [twice], mods)
    name = next(iter(mods))
    assert torch.allclose(one[name][0], two[name][0], rtol=1e-5, atol=1e-8)   # C_x: the prompt weighs 1 either way
    assert torch.allclose(one[name][1], two[name][1], rtol=1e-4, atol=1e-10)  # dy of the same J_p
    with_pad = covariances(policy, [answers[1], answers[0]], mods)  # padded beside a wider prompt
    alone = covariances(policy, [answers[0]], mods)
    assert torch.allclose(with_pad[name][0], one[name][0] + alone[name][0], rtol=1e-4, atol=1e-6)
    params = policy.trainable_parameters()
    assert all(p.grad is None for p in params)                      # no .grad written
    sub = build_subspaces(policy, [[answers[0]], [answers[1], answers[2]]], "both", 0.9, 1.0)
    assert len(sub.bases) == len(mods) and sub.ranks()["safety/act/k_in"] >= 1
    # several forward calls (a bucket per length) give one bucket's covariances, both factors
    many = covariances(policy, answers, mods)
    monkeypatch.setattr(estimates, "BUCKET_OVERHEAD_TOKENS", 10 ** 9)
    one_call = covariances(policy, answers, mods)
    assert overhead or len(estimates.pack_rows(estimates.distinct_rows(answers)[0], 0).buckets) > 1
    for k in mods:   # float32 sums in another order: relative to the matrix's size
        for a, b in zip(many[k], one_call[k]):
            assert float((a - b).norm() / b.norm()) < 1e-4, k


def test_real_policy_layout_projects_each_module_in_place(policy_and_answers):
    from retainrl.parallel import flat_params

    policy, answers = policy_and_answers
    sub = build_subspaces(policy, [[answers[0], answers[1]]], "both", 0.7, 1.0)
    params = policy.trainable_parameters()
    theta = flat_params(params)
    step = torch.randn(theta.shape, generator=torch.Generator().manual_seed(1), dtype=theta.dtype)
    out = sub.project(step, theta)
    named = policy.named_trainable()
    at, pieces = 0, {}
    for n, q in named.items():                                   # unflatten in the parameters' own order
        pieces[n] = (step[at:at + q.numel()].view(q.shape), out[at:at + q.numel()].view(q.shape))
        at += q.numel()
    assert at == theta.numel()
    for mod, (U, V) in sub.bases.items():
        A, B = named[f"{mod}.lora_A.default.weight"].detach().double(), named[f"{mod}.lora_B.default.weight"].detach().double()
        dA, gA = (x.double() for x in pieces[f"{mod}.lora_A.default.weight"])   # (raw step, projected)
        dB, gB = (x.double() for x in pieces[f"{mod}.lora_B.default.weight"])
        first = gB @ A + B @ gA
        raw = dB @ A + B @ dA
        assert float((V.T @ first @ U).norm()) < 1e-5 * max(1.0, float((V.T @ raw @ U).norm()))


def test_bases_wait_for_every_protected_skill_to_have_answers(policy_and_answers):
    from retainrl.safety.layer import SafetyLayer

    policy, answers = policy_and_answers
    layer = SafetyLayer(SafetyConfig(act_subspace="both"), {"gen": list(range(50)), "repair": list(range(50))},
                        None, seed=0)
    for s in ("gen", "repair"):
        layer.answer_memory(s)
    layer.answer_memories["gen"].answers[0] = answers[0]         # repair: nothing answered yet
    layer.anchor_for = ("gen", "repair")
    params = policy.trainable_parameters()
    layer._act_projection(policy, params, ["gen", "repair"])
    assert layer.act is not None and layer.act_for is None        # built from gen alone, marked incomplete
    first = layer.act
    layer.answer_memories["repair"].answers[1] = answers[1]
    layer._act_projection(policy, params, ["gen", "repair"])
    assert layer.act is not first and layer.act_for == ("gen", "repair")   # rebuilt once repair has answers
    again = layer.act
    layer._act_projection(policy, params, ["gen", "repair"])
    assert layer.act is again                                     # and then kept for the phase
    # saved right after a resume, before the next protected step lays them out: not lost
    fresh = SafetyLayer(SafetyConfig(act_subspace="both"), {"gen": list(range(50)), "repair": list(range(50))},
                        None, seed=0)
    fresh.load_state(layer.state())
    assert fresh.act is None and set(fresh.state()["act_bases"]) == set(layer.act.bases)


def test_layer_refuses_what_it_cannot_project():
    from retainrl.safety.layer import SafetyLayer

    for bad in (dict(constraint="skill_mean", budget="step"), dict(space="grad", budget="step"),
                dict(trigger=True)):
        with pytest.raises(ValueError, match="act_subspace"):
            SafetyLayer(SafetyConfig(act_subspace="both", **bad), {}, None, seed=0)
    from retainrl.integrations.step_hooks import SkillSafeStep

    with pytest.raises(ValueError, match="act_subspace"):   # the TRL / foreign-loop hooks do not project yet
        SkillSafeStep(SafetyLayer(SafetyConfig(act_subspace="both"), {}, None, seed=0), ["gen"], None, None)
    from retainrl.config import ConfigError, load_config
    from retainrl.train.config import RunConfig

    with pytest.raises(ConfigError, match="safety.act_subspace"):
        load_config(RunConfig, ROOT / "configs" / "smoke.yaml",
                    ["protocol.kind=mixed", "safety.enabled=true", "safety.act_subspace=both"])


def test_tiny_run_projects_the_step_and_resumes_with_the_same_bases(tmp_path):
    from retainrl.train import checkpoint

    out = tmp_path / "act"
    args = ["world.n_heldout=4", "eval.max_new_tokens=24", "sampling.max_new_tokens=24", "protocol.phases=[gen,repair]",
            "protocol.steps_per_phase=2", "safety.enabled=true", "safety.act_subspace=both", "safety.act_energy=0.7",
            "safety.memory_prompts=6", "safety.heldout_prompts=2", "safety.batch_prompts=3", "safety.memory_samples=4",
            "safety.diagnostics_every=1"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "retainrl", "train", str(ROOT / "configs" / "smoke.yaml"), *args,
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    phase2 = [r for r in recs if r["kind"] == "train" and r["phase"] == 1 and not r.get("update/no_signal")]
    assert phase2, "no update in the protected phase"
    for r in phase2:
        assert 0.0 < r["safety/act/removed_share"] < 1.0            # the projection removed part of the step
        assert r["safety/act/k_in"] >= 1 and r["safety/act/k_out"] >= 1
    st = checkpoint.load(out / "ckpt" / "state.safetensors")["safety"]
    assert st["act_for"] == ["gen"] and len(st["act_bases"]) > 0
    # the bases come back from the checkpoint as they were (not rebuilt from the resumed policy)
    from retainrl.safety.layer import SafetyLayer
    from retainrl.policy.model import ModelConfig, load_policy

    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    layer = SafetyLayer(SafetyConfig(act_subspace="both"), {"gen": list(range(100))}, None, seed=0)
    layer.load_state(st)
    layer.anchor_for = ("gen",)
    proj = layer._act_projection(policy, policy.trainable_parameters(), ["gen"])
    name, (U, V) = next(iter(st["act_bases"].items()))
    assert torch.equal(layer.act.bases[name][0], U) and torch.equal(layer.act.bases[name][1], V)
    assert proj == layer.act.project


def test_auto_is_both_where_it_applies_and_off_elsewhere():
    from retainrl.safety.layer import SafetyLayer, resolve_act

    assert resolve_act(SafetyConfig(), "sequential") == "both"         # the default in the trainer
    assert resolve_act(SafetyConfig(), "mixed") == "off"               # mixed protects the trained skills
    assert resolve_act(SafetyConfig(constraint="skill_mean", budget="step"), "sequential") == "off"
    assert resolve_act(SafetyConfig(space="grad", budget="step"), "sequential") == "off"
    assert resolve_act(SafetyConfig(trigger=True), "sequential") == "off"
    assert resolve_act(SafetyConfig(act_subspace="input"), "mixed") == "input"   # explicit values stay
    assert SafetyLayer(SafetyConfig(), {}, None, seed=0)._act_projection(None, [], ["gen"]) is None  # auto: off here
