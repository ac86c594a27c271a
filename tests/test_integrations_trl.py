"""retainrl inside TRL: per-skill Sandbox rewards, Task <-> dataset rows, and the skill-safe
callback on a real GRPOTrainer (tiny random Qwen2 + LoRA, CPU).

The skill-safe tests train skill "a" (reward: the completion contains an "e") while protecting
skill "b" (reward: it contains none), so the target and the protected gradients conflict and
the projection has work to do; the checks measure the applied step from the parameters
themselves, outside the callback."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("datasets")

from peft import LoraConfig  # noqa: E402
from transformers import AutoTokenizer, TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

from retainrl.data.task import Task  # noqa: E402
from retainrl.integrations.rewards import (dataset_tasks, skill_rewards, task_from_row, task_to_row,  # noqa: E402
                                           tasks_to_dataset, world_dataset)
from retainrl.integrations.step_hooks import SkillSafeStep  # noqa: E402
from retainrl.integrations.trl import SkillSafetyCallback, UnsupportedSetup, attach_skill_safety  # noqa: E402
from retainrl.parallel import flat_params, set_grads, set_params  # noqa: E402
from retainrl.policy.model import ModelConfig, load_policy  # noqa: E402
from retainrl.policy.rollout import SamplingConfig  # noqa: E402
from retainrl.safety.layer import SafetyLayer  # noqa: E402
from retainrl.train.config import SafetyConfig  # noqa: E402
from retainrl.verify import Sandbox  # noqa: E402

from tests.tiny_models import make_tiny  # noqa: E402

HAS_E, NO_E = r"(?s).*e.*", r"(?s)[^e]*"


def fmt_task(skill: str, i: int, pattern: str) -> Task:
    return Task(task_id=f"{skill}/{i}", skill=skill, source="test", prompt=f"def f(x): {i}", check="format",
                meta={"answer_format": pattern})


A_TASKS = [fmt_task("a", i, HAS_E) for i in range(8)]
B_TASKS = [fmt_task("b", i, NO_E) for i in range(8)]
MEMORY = dict(memory_prompts=2, memory_samples=4, batch_prompts=2)


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(workers=1) as sb:
        yield sb


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    torch.set_num_threads(1)
    return make_tiny("qwen2", tmp_path_factory.mktemp("tiny_trl"))


# ----------------------------------------------------------------------------- rewards and rows

def _unit(skill="gen", i=0):
    return Task(task_id=f"u{i}", skill=skill, source="t", prompt="write add", entry_point="add",
                tests="assert add(1, 2) == 3\n", meta={"k": [1, 2]})


def _output():
    return Task(task_id="o", skill="reason", source="t", prompt="what is f(1, 2)?", check="output_prediction",
                tests="def f(a, b):\n    return a + b\n", entry_point="f", call_input="1, 2")


def test_rows_round_trip_and_dataset_columns():
    tasks = [_unit(), _output()]
    ds = tasks_to_dataset(tasks)
    assert {"prompt", "skill", "check", "tests", "meta", "entry_point"} <= set(ds.column_names)
    assert dataset_tasks(ds) == {"gen": [tasks[0]], "reason": [tasks[1]]}
    conv = task_to_row(tasks[0], conversational=True)
    assert conv["prompt"] == [{"role": "user", "content": "write add"}]
    assert task_from_row(conv) == tasks[0]


@pytest.mark.parametrize("column,value,words", [("check", "rm -rf", "unknown check"), ("meta", "{", "not valid JSON"),
                                                 ("timeout_s", float("inf"), "timeout_s"), ("tests", 3, "'tests'")])
def test_bad_row_names_the_column(column, value, words):
    row = task_to_row(_unit())
    row[column] = value
    with pytest.raises(ValueError, match=words):
        task_from_row(row, "row 7")
    del row[column]
    with pytest.raises(ValueError, match=f"missing column '{column}'"):
        task_from_row(row, "row 7")


def test_skill_rewards_route_by_skill(sandbox):
    gen, reason = skill_rewards(sandbox, ["gen", "reason"])
    assert (gen.__name__, reason.__name__) == ("gen", "reason")
    rows = [task_to_row(t) for t in (_unit(i=0), _unit(i=1), _output(), _output())]
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    completions = ["def add(a, b):\n    return a + b\n", "def add(a, b):\n    return a - b\n", "3", "4"]
    assert gen(completions=completions, completion_ids=[[]] * 4, **cols) == [1.0, 0.0, None, None]
    assert reason(completions=completions, completion_ids=[[]] * 4, **cols) == [None, None, 1.0, 0.0]
    # conversational completions: the assistant message's content is what gets checked
    chat = [[{"role": "assistant", "content": c}] for c in completions]
    assert gen(completions=chat, **cols) == [1.0, 0.0, None, None]
    del cols["skill"]
    with pytest.raises(ValueError, match="no 'skill' column"):
        gen(completions=completions, **cols)


def test_world_dataset_rewards_references_and_wrong_answers(sandbox):
    """Every world skill through rows and its reward function: the reference scores 1 and a
    plausible wrong answer 0 (the meta of refactor's form check survives the JSON column)."""
    import random

    from retainrl.data.world import VERSION_SKILLS, WorldConfig, make_world, wrong_answer

    skills = list(VERSION_SKILLS[2])
    cfg = WorldConfig(version=2, skills=tuple(skills), n_train=2, n_heldout=1, timeout_s=20.0)  # loaded CI machines
    rows = list(world_dataset(cfg, "train"))
    cols = {k: [r[k] for r in rows] for k in rows[0]}
    tasks = [t for s in skills for t in make_world(cfg)[s]["train"]]  # with their references (not in the rows)
    assert [task_from_row(r).task_id for r in rows] == [t.task_id for t in tasks]
    rng = random.Random(0)
    right = [t.reference for t in tasks]
    wrong = [wrong_answer(t, rng) for t in tasks]
    for fn in skill_rewards(sandbox, skills):
        mine = [i for i, t in enumerate(tasks) if t.skill == fn.__name__]
        assert mine
        got_right, got_wrong = fn(completions=right, **cols), fn(completions=wrong, **cols)
        assert [got_right[i] for i in mine] == [1.0] * len(mine), fn.__name__
        assert [got_wrong[i] for i in mine] == [0.0] * len(mine), fn.__name__
        assert all(got_right[i] is None for i in range(len(tasks)) if i not in mine)
    with pytest.raises(ValueError, match="not in the world"):
        world_dataset(WorldConfig(n_train=1), skills=["nope"])


# ----------------------------------------------------------------------------- the callback in TRL

class Recorder(TrainerCallback):
    """Counts the hooks and measures each applied step from the parameters (before any other
    callback runs at pre-step; after every callback at step end)."""

    def __init__(self):
        self.pre = self.post = 0
        self.before, self.applied, self.rows = None, [], []
        self.safety: SkillSafetyCallback | None = None

    def _params(self, model):
        return [p for p in model.parameters() if p.requires_grad]

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.pre += 1
        self.before = flat_params(self._params(model))

    def on_optimizer_step(self, args, state, control, **kw):
        self.post += 1

    def on_step_end(self, args, state, control, model=None, **kw):
        self.applied.append(flat_params(self._params(model)) - self.before)
        self.rows.append(self.safety.hooks.last_rows.clone() if self.safety else None)


def make_trainer(model_dir, sandbox, accumulation=1, steps=3, recorder=None, seed=0, ddp=False):
    extra = dict(ddp_backend="gloo") if ddp else {}
    cfg = GRPOConfig(output_dir=str(model_dir) + f"/run{accumulation}", use_cpu=True, **extra,
                     per_device_train_batch_size=4,
                     num_generations=4, gradient_accumulation_steps=accumulation, max_completion_length=8,
                     max_steps=steps, learning_rate=5e-2, lr_scheduler_type="constant", beta=0.0, loss_type="dapo",
                     gradient_checkpointing=False, report_to="none", logging_steps=1, save_strategy="no",
                     disable_tqdm=True, seed=seed, shuffle_dataset=False)
    tok = AutoTokenizer.from_pretrained(model_dir, padding_side="left")
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    return GRPOTrainer(model=str(model_dir), reward_funcs=skill_rewards(sandbox, ["a", "b"]), args=cfg,
                       train_dataset=tasks_to_dataset(A_TASKS), processing_class=tok, peft_config=lora,
                       callbacks=[recorder] if recorder else None)


def trained_params(trainer):
    return flat_params([p for p in trainer.model.parameters() if p.requires_grad])


@pytest.mark.parametrize("accumulation,constraint", [(1, "skill_mean"), (2, "skill_mean"), (1, "prompt_ll")])
def test_hooks_once_per_step_and_constraint_holds(tiny, sandbox, accumulation, constraint):
    rec = Recorder()
    trainer = make_trainer(tiny, sandbox, accumulation, steps=3, recorder=rec)
    cb = attach_skill_safety(trainer, ["b"], {"b": B_TASKS}, sandbox, eps=0.0, refresh_every=1, rows_every=1,
                             constraint=constraint, **MEMORY)
    rec.safety = cb
    trainer.train()
    assert trainer.state.global_step == 3
    assert rec.pre == rec.post == 3 and cb.hooks.calls == {"before": 3, "after": 3}
    projected = 0
    for applied, G, h in zip(rec.applied, rec.rows, cb.history):
        assert G is not None and G.shape[1] == applied.numel()
        assert G.shape[0] == (1 if constraint == "skill_mean" else MEMORY["batch_prompts"])  # a row per prompt
        change = -(G.double() @ applied.double())  # first-order change of each row's J, measured on the parameters
        assert bool((change >= -1e-6 * float(G.norm() * applied.norm()) - 1e-12).all()), (h["step"], change)
        projected += int(h["skill_safe/projected"])
    assert projected >= 1  # the conflict is real: the test would see an unprojected step fail
    logged = {k for entry in trainer.state.log_history for k in entry}
    memory_key = "skill_safe/memory_reward/b" if constraint == "skill_mean" else "skill_safe/memory_pass/b"
    assert {"rewards/a/mean", "rewards/b/mean", "skill_safe/num_protected", "skill_safe/num_active",
            "skill_safe/predicted_dJ/b", memory_key} <= logged


def test_rows_every_reuses_rows_until_a_refresh(tiny, sandbox):
    """safety rows_every=2 through the callback: rows built at steps 0 and 2, reused (the same G)
    at step 1 and rebuilt at once at step 3's memory refresh; the constraint holds against the
    rows used."""
    rec = Recorder()
    trainer = make_trainer(tiny, sandbox, steps=4, recorder=rec)
    cb = attach_skill_safety(trainer, ["b"], {"b": B_TASKS}, sandbox, eps=0.0, refresh_every=3, rows_every=2,
                             **MEMORY)
    rec.safety = cb
    trainer.train()
    assert torch.equal(rec.rows[0], rec.rows[1])
    assert not torch.equal(rec.rows[1], rec.rows[2]) and not torch.equal(rec.rows[2], rec.rows[3])
    for applied, G in zip(rec.applied, rec.rows):
        assert float(-(G.double() @ applied.double())) >= -1e-6 * float(G.norm() * applied.norm()) - 1e-12


def test_inactive_constraint_is_bit_identical(tiny, sandbox):
    plain = make_trainer(tiny, sandbox, steps=2)
    plain.train()
    safe = make_trainer(tiny, sandbox, steps=2)
    cb = attach_skill_safety(safe, ["b"], {"b": B_TASKS}, sandbox, eps=1e9, eps_mode="absolute", refresh_every=1,
                             **MEMORY)
    safe.train()
    assert [h["skill_safe/num_active"] for h in cb.history] == [0.0, 0.0]  # rows built, nothing active
    assert torch.equal(trained_params(plain), trained_params(safe))
    assert not torch.equal(trained_params(plain), trained_params(make_trainer(tiny, sandbox, steps=0)))


def test_refuses_deepspeed_fsdp1_and_bad_arguments(tiny, sandbox):
    trainer = make_trainer(tiny, sandbox, steps=1)
    with pytest.raises(ValueError, match="no memory tasks"):
        attach_skill_safety(trainer, ["b"], {"a": A_TASKS}, sandbox)
    trainer.is_deepspeed_enabled = True
    with pytest.raises(UnsupportedSetup, match="inside accelerator.backward"):
        attach_skill_safety(trainer, ["b"], {"b": B_TASKS}, sandbox)
    import types

    trainer.is_deepspeed_enabled, trainer.is_fsdp_enabled = False, True
    trainer.accelerator = types.SimpleNamespace(distributed_type="DistributedType.FSDP", is_fsdp2=False)
    with pytest.raises(UnsupportedSetup, match="FSDP1 is not supported: it flattens"):
        attach_skill_safety(trainer, ["b"], {"b": B_TASKS}, sandbox)
    trainer.accelerator.is_fsdp2 = True  # FSDP2 passes the check; per-prompt rows have no sharded form
    with pytest.raises(UnsupportedSetup, match="no sharded form"):
        attach_skill_safety(trainer, ["b"], {"b": B_TASKS}, sandbox, constraint="prompt_ll")


# ----------------------------------------------------------------------------- equals retainrl's own layer

@pytest.mark.parametrize("constraint,budget", [("skill_mean", "step"), ("prompt_ll", "step"), ("prompt_ll", "phase"),
                                               ("prompt_ll_subspace", "step")])
def test_hooks_around_a_step_equal_the_layers_step(tiny, sandbox, constraint, budget):
    """Same model, memory, seed, gradient: SafetyLayer.step (which takes the step itself) and
    before(); optimizer.step(); after() give the same rows, the same active constraints and the
    same parameters, for every constraint type (per-prompt answer likelihood too, and its phase
    budget), and the applied step keeps every row's first-order change >= -eps."""
    cfg = SafetyConfig(enabled=True, eps=0.0, eps_mode="absolute", refresh_every=1, constraint=constraint,
                       budget=budget, **MEMORY)
    sampling = SamplingConfig(max_new_tokens=8)

    def fresh():
        torch.manual_seed(0)
        policy = load_policy(ModelConfig(name_or_path=str(tiny), device="cpu", lora_r=4, lora_alpha=8,
                                         chat_template="off"))
        params = policy.trainable_parameters()
        opt = torch.optim.Adam(params, lr=5e-2)
        return policy, params, opt, SafetyLayer(cfg, {"b": B_TASKS}, sampling, seed=3)

    policy, params, opt, probe = fresh()
    for p in params:  # LoRA B starts at zero: give the adapter some weight so the rows are non-trivial
        torch.nn.init.normal_(p.data, std=0.3)
    init = flat_params(params)
    rows = probe.build_rows(probe, policy, params, sandbox, 0, ["b"]).G
    assert rows.shape[0] >= 1 and float(rows.norm()) > 0
    # a step along -g changes J of row 0 by about <-G_0, -g> = <G_0, g> < 0 here: a conflict
    g = -rows[0] + 0.3 * rows[0].norm() * torch.randn_like(rows[0]) / rows[0].numel() ** 0.5

    results = []
    for mode in ("layer", "hooks"):
        policy, params, opt, layer = fresh()
        set_params(params, init)
        set_grads(params, g)
        if mode == "layer":
            m = layer.step(params, opt, policy, sandbox, 0, ["b"])
            G, eps = None, None
        else:
            hooks = SkillSafeStep(layer, ["b"], sandbox, policy, prefix="safety")
            hooks.before(params, 0)
            cons = hooks.pending["cons"]
            G, eps = cons.G, cons.eps
            opt.step()
            m = hooks.after(params)
        results.append((flat_params(params), m, G, eps))
    (p_layer, m_layer, _, _), (p_hooks, m_hooks, G, eps) = results
    assert torch.equal(G, rows)  # the hooks' rows are the layer's (same memory, seeds, parameters)
    assert m_layer["safety/num_active"] == m_hooks["safety/num_active"] >= 1.0
    assert m_layer["safety/num_rows"] == m_hooks["safety/num_rows"] == float(rows.shape[0])
    assert torch.allclose(p_layer, p_hooks, atol=1e-7, rtol=0)
    step = p_hooks - init
    assert float(step.norm()) > 0
    for applied in (step, p_layer - init):  # every row: <grad J_k, applied> >= -eps_k (float32 rounding)
        change = -(G.double() @ applied.double())
        assert bool((change >= -eps - 1e-6 * float(G.norm() * applied.norm())).all()), (change, eps)


# ----------------------------------------------------------------------------- 2-rank DDP / FSDP2 (gloo, torchrun)

def run_worker(mode: str, model_dir, out_dir, ranks: int = 2) -> None:
    """tests/trl_ddp_worker.py MODE under torchrun --standalone with `ranks` CPU ranks (1: plain python)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks)] \
        if ranks > 1 else [sys.executable]
    proc = subprocess.run(launch + [str(root / "tests" / "trl_ddp_worker.py"), mode, str(model_dir), str(out_dir)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_ddp_two_ranks_apply_identical_parameters(tiny, tmp_path):
    """torchrun, 2 CPU ranks, gloo: each rank generates its own half of the batch; DDP averages
    .grad, the callback averages the rows, so both ranks project the same vectors and end with
    bit-identical parameters, with the constraint holding for the applied steps."""
    import json

    run_worker("trl", tiny, tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == 2
    assert torch.equal(r0["params"], r1["params"])
    h0, h1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert [h["skill_safe/num_active"] for h in h0] == [h["skill_safe/num_active"] for h in h1]
    assert sum(h["skill_safe/projected"] for h in h0) >= 1
    for a0, a1, G in zip(r0["applied"], r1["applied"], r0["rows"]):
        assert torch.equal(a0, a1)
        assert float(-(G.double() @ a0.double())) >= -1e-6 * float(G.norm() * a0.norm()) - 1e-12
    assert float(sum(a.norm() for a in r0["applied"])) > 0


def _check_matches_one_process(runs: list[dict], one: dict, rows_too: bool) -> None:
    """Every rank's applied steps equal, and equal to one process's on the global batch within
    float32 reduction-order tolerance; the steps were projected and the constraint holds."""
    assert one["world"] == 1 and all(r["world"] == 2 for r in runs)
    for r in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0]["applied"], r["applied"]))
        assert torch.equal(runs[0]["params"], r["params"])
    r0 = runs[0]
    assert len(r0["applied"]) == len(one["applied"]) == 2
    for step, (a2, a1, p1, G1, m2, m1) in enumerate(zip(r0["applied"], one["applied"], one["proposed"], one["rows"],
                                                     r0["metrics"], one["metrics"])):
        assert m2["skill_safe/num_active"] == m1["skill_safe/num_active"] == 1.0, step
        assert m1["skill_safe/projected"] == m2["skill_safe/projected"] == 1.0, step
        assert float((a1 - p1).norm()) > 1e-3 * float(p1.norm())          # the projection changed the step
        assert float((a2 - a1).norm()) <= 1e-4 * float(a1.norm()), (step, float((a2 - a1).norm()), float(a1.norm()))
        for a in (a1, a2):  # <grad J_b, step> >= -tol on the one-process rows, for both runs' steps
            assert float(-(G1.double() @ a.double())) >= -1e-5 * float(G1.norm() * a.norm()), step
        assert m2["skill_safe/predicted_dJ/b"] == pytest.approx(m1["skill_safe/predicted_dJ/b"],
                                                               abs=1e-5 * float(G1.norm() * a1.norm()))
        if rows_too:
            assert torch.allclose(r0["rows"][step], G1, rtol=1e-4, atol=1e-6 * float(G1.norm()))
    assert float((r0["params"] - one["params"]).norm()) <= 1e-4 * float(one["params"].norm())


def test_ddp_hooks_match_one_process_on_the_global_batch(tiny, tmp_path):
    """The hooks' part of "DDP matches one process": the same global batch split over 2 gloo
    ranks (torch DDP averages .grad) and run whole in one process gives the same projected steps
    (TRL's own per-rank sampling differs from one process's, so the check is at this level)."""
    run_worker("hooks", tiny, tmp_path, ranks=2)
    run_worker("hooks", tiny, tmp_path, ranks=1)
    runs = [torch.load(tmp_path / f"hooks_w2_rank{r}.pt") for r in (0, 1)]
    _check_matches_one_process(runs, torch.load(tmp_path / "hooks_w1_rank0.pt"), rows_too=True)


def test_fsdp2_hooks_match_one_process_on_the_global_batch(tiny, tmp_path):
    """FSDP2 (fully_shard, gloo, 2 CPU ranks): LoRA parameters and .grad are DTensor shards; the
    rows, the projection and the write-back run on the local shards with all-reduced dot
    products, and the gathered steps equal one process's on the global batch."""
    run_worker("fsdp", tiny, tmp_path, ranks=2)
    run_worker("hooks", tiny, tmp_path, ranks=1)
    runs = [torch.load(tmp_path / f"fsdp_w2_rank{r}.pt") for r in (0, 1)]
    _check_matches_one_process(runs, torch.load(tmp_path / "hooks_w1_rank0.pt"), rows_too=False)
    assert all(r0.shape[1] < r1.shape[1] for r0, r1 in zip(runs[0]["rows"], torch.load(
        tmp_path / "hooks_w1_rank0.pt")["rows"]))  # the rows really were shard-local


def test_plain_transformers_trainer_gets_the_metrics_in_log_history(tiny, sandbox, tmp_path):
    """Without TRL's metric store the callback adds skill_safe/* to each log_history entry."""
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForLanguageModeling, Trainer, TrainingArguments

    tok = AutoTokenizer.from_pretrained(tiny, padding_side="left")
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny),
                           LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    ds = Dataset.from_list([tok(f"def f(x):\n    return x + {i}\n") for i in range(8)])
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, max_steps=2, per_device_train_batch_size=4,
                             logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, seed=0)
    trainer = Trainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    cb = attach_skill_safety(trainer, ["b"], {"b": B_TASKS}, sandbox, eps=0.0, refresh_every=1, **MEMORY)
    trainer.train()
    assert cb.hooks.calls == {"before": 2, "after": 2}
    logged = [e for e in trainer.state.log_history if "loss" in e]
    assert len(logged) == 2 and all("skill_safe/num_protected" in e and "skill_safe/predicted_dJ/b" in e
                                    for e in logged)
