"""Skill assignment from data sources: loader default, a constant, a record field, a user
function; hash splits; several sources feeding one skill; the trainer building its task sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retainrl.config import load_config
from retainrl.data.sources import DataConfig, SourceConfig, heldout_bucket, load_source, load_sources
from retainrl.train.config import RunConfig
from retainrl.train.trainer import build_tasks

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _jsonl(path: Path, n: int, skill_of=lambda i: "gen") -> Path:
    with open(path, "w") as fh:
        for i in range(n):
            rec = {"task_id": f"t{i}", "prompt": f"Write f{i}.", "tests": f"assert f{i}() == {i}",
                   "skill": skill_of(i), "meta": {"tool": "shell" if i % 3 == 0 else "python"}}
            fh.write(json.dumps(rec) + "\n")
    return path


def by_tool(task):  # a user function: skill by tool type recorded in meta; None drops the task
    return None if task.task_id == "t1" else f"tool_{task.meta['tool']}"


def test_skill_from_record_field_constant_and_function(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", 6, skill_of=lambda i: "repair" if i % 2 else "gen")
    field = load_source(SourceConfig(name="jsonl", path=str(path)), 0)
    assert [t.skill for t in field] == ["gen", "repair"] * 3
    const = load_source(SourceConfig(name="jsonl", path=str(path), skill="mine"), 0)
    assert {t.skill for t in const} == {"mine"}
    fn = load_source(SourceConfig(name="jsonl", path=str(path), skill_fn="tests.test_sources:by_tool"), 0)
    assert [(t.task_id, t.skill) for t in fn] == [("t0", "tool_shell"), ("t2", "tool_python"),
                                                  ("t3", "tool_shell"), ("t4", "tool_python"), ("t5", "tool_python")]


def by_category(task):
    return task.meta["category"]


def test_skill_fn_reads_a_custom_record_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"task_id": "a", "prompt": "p", "tests": "assert True", "category": "shell"}) + "\n")
    tasks = load_source(SourceConfig(name="jsonl", path=str(path), skill_field="category",
                                     skill_fn="tests.test_sources:by_category"), 0)
    assert [t.skill for t in tasks] == ["shell"]


def test_bad_skill_fn_and_missing_file_name_the_source(tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", 2)
    with pytest.raises(ValueError, match=r"skill_fn 'nope'"):
        load_source(SourceConfig(name="jsonl", path=str(path), skill_fn="nope"), 0)
    with pytest.raises(ValueError, match=r"data.sources\[3\].*missing.jsonl"):
        load_source(SourceConfig(name="jsonl", path=str(tmp_path / "missing.jsonl")), 3)


def test_hash_split_is_fixed_and_sources_merge_into_one_skill(tmp_path):
    a = _jsonl(tmp_path / "a.jsonl", 40)
    b = tmp_path / "b.jsonl"
    b.write_text(a.read_text().replace('"task_id": "t', '"task_id": "u').replace("Write f", "Write g"))
    cfg = DataConfig(sources=[SourceConfig(name="jsonl", path=str(a)), SourceConfig(name="jsonl", path=str(b))],
                     heldout_fraction=0.5)
    train, held = load_sources(cfg)
    assert set(train) == set(held) == {"gen"}
    assert len(train["gen"]) + len(held["gen"]) == 80
    assert all(heldout_bucket(t) < 0.5 for t in held["gen"]) and all(heldout_bucket(t) >= 0.5 for t in train["gen"])
    # the same task lands on the same side whatever else is loaded
    alone, _ = load_sources(DataConfig(sources=[SourceConfig(name="jsonl", path=str(a))], heldout_fraction=0.5))
    assert {t.task_id for t in alone["gen"]} == {t.task_id for t in train["gen"] if t.task_id.startswith("t")}
    forced = load_sources(DataConfig(sources=[SourceConfig(name="jsonl", path=str(a), split="train")]))
    assert len(forced[0]["gen"]) == 40 and not forced[1]


@pytest.mark.skipif(not (DATA / "humaneval").exists(), reason="../shared/data not present")
def test_trainer_tasks_from_benchmarks_plus_world():
    cfg = load_config(RunConfig, {
        "protocol": {"kind": "sequential", "phases": ["gen", "repair"]},
        "world": {"n_train": 5, "n_heldout": 4},
        "data": {"world_skills": ["reason"], "heldout_fraction": 0.25, "sources": [
            {"name": "humaneval", "path": str(DATA / "humaneval")},
            {"name": "humanevalfix", "path": str(DATA / "humanevalpack"), "limit": 40}]}})
    train, held = build_tasks(cfg)
    assert {t.source for t in train["gen"]} == {"humaneval"} and len(train["gen"]) + len(held["gen"]) == 164
    assert {t.source for t in train["repair"]} == {"humanevalfix"}
    assert len(held["reason"]) == 4 and {t.source for t in held["reason"]} == {"world"}
    assert 0.15 < len(held["gen"]) / 164 < 0.35


def test_config_rejects_unknown_loader():
    with pytest.raises(ValueError, match=r"data.sources\[0\].name"):
        load_config(RunConfig, {"data": {"sources": [{"name": "humaneva", "path": "x"}]}})


def test_wandb_sink_logs_finite_scalars_and_resumes_its_run(tmp_path, monkeypatch):
    """W&B through a stand-in module (the real package needs an account): init once per run
    id, finite scalars only, same id after a resume; a missing package only warns."""
    import sys
    import types

    from retainrl.train.runio import WandB

    calls = []

    class FakeRun:
        def log(self, values, step):
            calls.append(("log", step, values))

        def finish(self):
            calls.append(("finish",))

    fake = types.SimpleNamespace(util=types.SimpleNamespace(generate_id=lambda: "abc123"),
                                 init=lambda **kw: calls.append(("init", kw["id"], kw["resume"])) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    sink = WandB(tmp_path, True, "proj", "run", {"seed": 0})
    sink.scalars(3, {"reward/mean": 0.5, "bad": float("nan"), "flag": True, "name": "x"})
    sink.close()
    assert calls == [("init", "abc123", "allow"), ("log", 3, {"reward/mean": 0.5}), ("finish",)]
    fake.util.generate_id = lambda: "other"
    WandB(tmp_path, True, "proj", "run", {}).close()
    assert calls[3] == ("init", "abc123", "allow")  # resumed: the stored id, not a new one
    monkeypatch.setitem(sys.modules, "wandb", None)  # import fails
    with pytest.warns(UserWarning, match="wandb package is not installed"):
        off = WandB(tmp_path / "b", True, "proj", "run", {})
    off.scalars(1, {"a": 1.0})
    off.close()


@pytest.mark.skipif(not (DATA / "humaneval").exists(), reason="../shared/data not present")
def test_demo_real_benchmark_option_builds_three_skills_from_five_benchmarks():
    from retainrl.cli import real_benchmark_overrides

    cfg = load_config(RunConfig, Path(__file__).resolve().parents[1] / "retainrl" / "configs" / "demo.yaml",
                      real_benchmark_overrides(DATA))
    train, held = build_tasks(cfg)
    assert set(train) == set(held) == {"gen", "repair", "reason"}
    assert {t.source for t in train["gen"]} == {"humaneval", "mbpp"}
    assert {t.source for t in train["repair"]} == {"humanevalfix", "quixbugs"}
    assert {t.source for t in train["reason"]} == {"cruxeval"}
    assert len(held["gen"]) == len(held["reason"]) == 100 and 40 < len(held["repair"]) < 100  # capped at 100
    train_ids = {t.content_hash() for s in train for t in train[s]}
    assert not train_ids & {t.content_hash() for s in held for t in held[s]}


@pytest.mark.skipif(not (DATA / "humaneval").exists(), reason="../shared/data not present")
def test_demo_with_a_model_directory_and_the_real_benchmarks(tmp_path):
    """`retainrl demo --model DIR --data ../shared/data`: the non-bundled path end to end (a
    random tiny Llama saved to disk stands in for a real checkpoint), both methods, a report."""
    from retainrl import cli
    from tests.tiny_models import make_tiny

    model = make_tiny("llama", tmp_path / "model")
    out = tmp_path / "demo"
    rc = cli.main(["demo", "--model", model, "--data", str(DATA), "--methods", "plain,safe", "--out", str(out),
                   "protocol.steps_per_phase=1", "data.max_heldout_per_skill=3", "sampling.max_new_tokens=8",
                   "eval.max_new_tokens=8", "eval.every=0", "rl.prompts_per_step=2", "rl.samples_per_prompt=2",
                   "rl.micro_batch_prompts=2", "safety.memory_prompts=2", "safety.memory_samples=2",
                   "safety.batch_prompts=2", "progress=false", "model.threads=1"])
    assert rc == 0
    for method in ("plain", "safe"):
        summary = json.loads((out / method / "seed0" / "summary.json").read_text())
        assert summary["skills"] == ["gen", "repair", "reason"] and len(summary["R"]) == 4
        evals = [json.loads(x) for x in (out / method / "seed0" / "metrics.jsonl").read_text().splitlines()
                 if '"eval"' in x]
        assert {e["n"] for e in evals} == {3}
    assert (out / "report" / "report.html").exists()
    assert "model" in (out / "plain" / "seed0" / "config.yaml").read_text()
