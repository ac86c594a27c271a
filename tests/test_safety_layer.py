"""The skill-safe layer. Where the constraint holds: step-space projection keeps <grad J_s, applied
step> >= -eps under Adam; gradient-space projection is exact only for SGD (Adam's preconditioner
bends it). Which skills are protected (protect=earlier/others, mixed) and switched on (trigger):
pure functions, checked by hand. SafetyLayer.step with explicit inputs, no trainer."""

from __future__ import annotations

import pytest
import torch

from retainrl.parallel import flat_params, set_grads
from retainrl.safety.layer import (CONSTRAINTS, Constraints, SafetyLayer, current_value, protected_skills,
                                   reference_value, safe_step, trigger_on)
from retainrl.seeds import derive_seed
from retainrl.train.config import SafetyConfig


def _instance(seed: int, d: int = 40, S: int = 3):
    gen = torch.Generator().manual_seed(seed)
    scales = torch.rand(d, generator=gen) * 10 + 0.1  # uneven scales: Adam's preconditioner matters
    g = torch.randn(d, generator=gen) * scales
    G = torch.randn(S, d, generator=gen) * scales - 0.7 * g  # protected gradients conflict with g
    return g, G


def _step(g, G, opt_name: str, space: str, warm: int = 3):
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.zeros(g.numel()))
    opt = torch.optim.Adam([p], lr=0.1) if opt_name == "adam" else torch.optim.SGD([p], lr=0.1)
    gen = torch.Generator().manual_seed(1)
    for _ in range(warm):  # give Adam non-trivial moments first
        set_grads([p], torch.randn(g.numel(), generator=gen) * g.abs())
        opt.step()
    applied, metrics = safe_step([p], opt, g, G, 0.0, "absolute", space, "exact")
    return applied, metrics


def _worst_change(G, applied):
    # first-order change of J_s = -<G_s, applied>; the constraint asks for >= -eps = 0
    return float((-(G.double() @ applied.double())).min())


def test_step_space_guarantee_holds_under_adam():
    for seed in range(30):
        g, G = _instance(seed)
        applied, _ = _step(g, G, "adam", "step")
        assert _worst_change(G, applied) >= -1e-6 * float(G.norm() * applied.norm())


def test_grad_space_is_exact_for_sgd():
    for seed in range(30):
        g, G = _instance(seed)
        applied, _ = _step(g, G, "sgd", "grad")
        assert _worst_change(G, applied) >= -1e-6 * float(G.norm() * applied.norm())


def test_grad_space_under_adam_can_break_the_constraint():
    broken = 0
    for seed in range(30):
        g, G = _instance(seed)
        applied, _ = _step(g, G, "adam", "grad")
        broken += _worst_change(G, applied) < -1e-6 * float(G.norm() * applied.norm())
    # Measured on these 30 seeded instances; the point is that it happens, not how often.
    assert broken > 0


def test_feasible_update_is_left_alone():
    g = torch.tensor([1.0, 0.0])
    G = torch.tensor([[1.0, 1.0]])  # aligned with g: no conflict
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    applied, metrics = safe_step([p], opt, g, G, 0.0, "absolute", "step", "exact")
    assert torch.allclose(applied, torch.tensor([-0.5, 0.0]))
    assert metrics["proj/num_active"] == 0.0


def test_hand_computed_projection_of_sgd_step():
    # g = (1, 0), protected G_s = (-1, 1): the SGD step -lr*g = (-0.5, 0) changes J_s by
    # -<G_s, step> = -0.5 < 0. Projecting u = -step = (0.5, 0) onto <G_s, u> >= 0 gives
    # u* = (0.25, 0.25), so the applied step is (-0.25, -0.25).
    g = torch.tensor([1.0, 0.0])
    G = torch.tensor([[-1.0, 1.0]])
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.5)
    applied, _ = safe_step([p], opt, g, G, 0.0, "absolute", "step", "exact")
    assert torch.allclose(applied, torch.tensor([-0.25, -0.25]))
    assert torch.allclose(flat_params([p]), torch.tensor([-0.25, -0.25]))


def test_memory_surrogate_skips_zero_advantage_groups_exactly():
    """SkillMemory.surrogate runs only groups with some non-zero advantage; J_s and its gradient
    equal the all-rows token mean (the skipped rows contribute exact zeros)."""
    from retainrl.policy.model import ModelConfig, load_policy
    from retainrl.policy.rollout import SamplingConfig, completion_logprobs, generate
    from retainrl.rl.losses import aggregate
    from retainrl.safety.estimates import SkillMemory

    torch.manual_seed(0)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    with torch.no_grad():
        for n, p in policy.named_trainable().items():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    mem = SkillMemory("gen", [None] * 3, 3, 4, seed=0)
    mem.rollout = generate(policy, ["def f(x):", "assert", "x = 1"], n=4, cfg=SamplingConfig(max_new_tokens=6), seed=0)
    mem.advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0, 0, 0, 0, -1.0, 1.0, 0.0, 0.0])  # group 2 all zero
    with torch.no_grad():
        mem.behaviour = completion_logprobs(policy, mem.rollout)[0] - 0.01
    rows = list(range(12))
    params = policy.trainable_parameters()
    J = mem.surrogate(policy, rows, is_clip=2.0)
    g = torch.autograd.grad(J, params, allow_unused=True)
    lp, _, _ = completion_logprobs(policy, mem.rollout)  # every row, by hand
    ratio = torch.exp(lp - mem.behaviour).clamp(max=2.0)
    J_ref = aggregate(ratio * mem.advantages[:, None], mem.rollout.completion_mask, "token_mean")
    g_ref = torch.autograd.grad(J_ref, params, allow_unused=True)
    assert torch.allclose(J, J_ref, atol=1e-6)
    for a, b in zip(g, g_ref):
        if a is None or b is None:
            assert a is None and b is None
        else:
            assert torch.allclose(a, b, atol=1e-6)


# -- which skills are protected, and the trigger: pure functions -------------------------------

PHASES = [["gen"], ["repair"], ["reason"]]
SKILLS = ["gen", "repair", "reason", "extra"]


def test_protect_earlier_is_the_skills_of_earlier_phases_in_order():
    assert protected_skills("sequential", "earlier", PHASES, 0, SKILLS, set(SKILLS)) == []
    assert protected_skills("sequential", "earlier", PHASES, 1, SKILLS, set(SKILLS)) == ["gen"]
    assert protected_skills("sequential", "earlier", PHASES, 2, SKILLS, set(SKILLS)) == ["gen", "repair"]
    # a skill trained again now is not protected, and a repeated one is protected once
    again = [["gen"], ["repair"], ["gen"], ["repair", "reason"]]
    assert protected_skills("sequential", "earlier", again, 2, SKILLS, set(SKILLS)) == ["repair"]
    assert protected_skills("sequential", "earlier", again, 3, SKILLS, set(SKILLS)) == ["gen"]


def test_protect_others_is_every_untrained_skill_with_training_tasks():
    # phase 0 already protects the later skills; "extra" has held-out tasks only: no gradient estimate
    trainable = {"gen", "repair", "reason"}
    assert protected_skills("sequential", "others", PHASES, 0, SKILLS, trainable) == ["repair", "reason"]
    assert protected_skills("sequential", "others", PHASES, 1, SKILLS, trainable) == ["gen", "reason"]
    assert protected_skills("sequential", "others", PHASES, 1, SKILLS, trainable | {"extra"}) == ["gen", "reason",
                                                                                                 "extra"]


def test_mixed_protocol_protects_the_skills_being_trained():
    assert protected_skills("mixed", "earlier", [["gen", "repair"]], 0, SKILLS, set(SKILLS)) == ["gen", "repair"]
    assert protected_skills("mixed", "others", [["gen", "repair"]], 0, SKILLS, set(SKILLS)) == ["gen", "repair"]


def test_trigger_pure_functions_by_hand():
    assert reference_value([]) == 0.0 and reference_value([0.2, 0.5, 0.4]) == 0.5
    assert current_value("eval", [0.2, 0.5, 0.4], 0.9, 0.5) == 0.4
    assert current_value("eval", [], None, 0.3) == 0.3          # nothing measured yet: no drop
    assert current_value("memory", [0.2], 0.9, 0.5) == 0.9
    assert current_value("memory", [0.2], None, 0.5) == 0.2     # no memory yet: the eval value
    assert trigger_on(0.5, 0.4, tau=0.05) and not trigger_on(0.5, 0.46, tau=0.05)
    assert not trigger_on(0.5, 0.45, tau=0.05)                  # strictly more than tau below


def test_switched_on_follows_the_eval_curve_and_records_one_event_per_switch_on():
    layer = SafetyLayer(SafetyConfig(enabled=True, trigger=True, tau=0.05), {}, None, seed=0)
    curves = {"gen": [0.6], "repair": [0.3]}
    assert layer.switched_on(["gen", "repair"], 4, curves) == []
    assert layer.reference == {"gen": 0.6, "repair": 0.3}       # fixed when first protected
    curves = {"gen": [0.6, 0.5], "repair": [0.3, 0.28]}
    assert layer.switched_on(["gen", "repair"], 5, curves) == ["gen"]
    curves["gen"].append(0.52)
    assert layer.switched_on(["gen", "repair"], 6, curves) == ["gen"]
    curves["gen"].append(0.58)
    assert layer.switched_on(["gen", "repair"], 7, curves) == []
    assert layer.events == [{"step": 6, "skill": "gen", "reference": 0.6, "value": 0.5}]
    # the reference is the best value when the skill was first protected, not a later best
    curves["gen"].append(0.9)
    assert layer.switched_on(["gen"], 8, curves) == [] and layer.reference["gen"] == 0.6


def test_without_the_trigger_every_protected_skill_is_on():
    layer = SafetyLayer(SafetyConfig(enabled=True), {}, None, seed=0)
    assert layer.switched_on(["gen", "repair"], 0, {"gen": [1.0, 0.0]}) == ["gen", "repair"]
    assert layer.events == []


# -- SafetyLayer.step with explicit inputs (no trainer) --------------------------------------
def _fixed_rows(rows: dict[str, list[float]]):
    def build(layer, policy, params, sandbox, step, skills):
        G = torch.tensor([rows[s] for s in skills])
        return Constraints(G, torch.zeros(len(skills), dtype=torch.float64), "absolute", list(skills))
    return build


def test_step_takes_explicit_inputs_and_projects_by_hand(monkeypatch):
    # the same numbers as test_hand_computed_projection_of_sgd_step, through SafetyLayer.step
    monkeypatch.setitem(CONSTRAINTS, "fixed", _fixed_rows({"gen": [-1.0, 1.0], "repair": [1.0, 1.0]}))
    layer = SafetyLayer(SafetyConfig(enabled=True, space="step"), {}, None, seed=0, constraint="fixed")
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 0.0])
    opt = torch.optim.SGD([p], lr=0.5)
    m = layer.step([p], opt, policy=None, sandbox=None, step=3, protected=["gen", "repair"])
    assert torch.allclose(p.detach(), torch.tensor([-0.25, -0.25]))
    assert m["safety/num_protected"] == 2.0 and m["safety/num_active"] == 1.0
    assert m["safety/predicted_dJ/gen"] == pytest.approx(0.0, abs=1e-7)     # active: exactly on the boundary
    assert m["safety/predicted_dJ/repair"] == pytest.approx(0.5)            # -<(1, 1), (-0.25, -0.25)>
    assert m["safety/cos/target~gen"] == pytest.approx(-2 ** -0.5)


def test_step_with_nothing_protected_is_the_plain_optimizer_step():
    layer = SafetyLayer(SafetyConfig(enabled=True), {}, None, seed=0)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, -2.0])
    m = layer.step([p], torch.optim.SGD([p], lr=0.5), policy=None, sandbox=None, step=0, protected=[])
    assert torch.equal(p.detach(), torch.tensor([-0.5, 1.0])) and m == {"safety/num_protected": 0.0}


def test_memories_have_distinct_hashed_seeds_per_skill():
    # the old seed arithmetic (seed * 7 + step * 13 + len(skill)) gave repair and reason one seed
    seeds = {s: derive_seed(0, 10, f"safety/memory/{s}") for s in ("gen", "repair", "reason")}
    assert len(set(seeds.values())) == 3
    tasks = {s: list(range(100)) for s in ("repair", "reason")}
    layer = SafetyLayer(SafetyConfig(enabled=True, memory_prompts=8), tasks, None, seed=0)
    assert layer.memory("repair").tasks != layer.memory("reason").tasks
    again = SafetyLayer(SafetyConfig(enabled=True, memory_prompts=8), tasks, None, seed=0)
    assert again.memory("reason").tasks == layer.memory("reason").tasks   # order of creation does not matter
    with pytest.raises(ValueError, match="no training tasks"):
        layer.memory("gen")


def test_a_skill_may_own_several_rows():
    # GEM-style rows: gen owns (-1, 1) and (0, 1); the projection keeps both, the diagnostics
    # report gen once, from the mean of its rows (-0.5, 1)
    def build(layer, policy, params, sandbox, step, skills):
        return Constraints(torch.tensor([[-1.0, 1.0], [0.0, 1.0]]), torch.zeros(2, dtype=torch.float64), "absolute",
                           ["gen", "gen"])

    layer = SafetyLayer(SafetyConfig(enabled=True, space="step"), {}, None, seed=0)
    layer.build_rows = build
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, 0.0])
    m = layer.step([p], torch.optim.SGD([p], lr=0.5), policy=None, sandbox=None, step=0, protected=["gen"])
    assert torch.allclose(p.detach(), torch.tensor([-0.25, -0.25]))       # (0, 1) is inactive here
    assert m["safety/predicted_dJ/gen"] == pytest.approx(-(0.125 - 0.25))  # -<(-0.5, 1), (-0.25, -0.25)>
    assert [k for k in m if k.startswith("safety/cos/")] == ["safety/cos/target~gen"]
