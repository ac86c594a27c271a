"""Bad input and damaged runs (issue 14): every malformed config, model folder, data file and run
folder gets a clear error naming what and where (exit code 2, no traceback), before anything
heavy loads, and a damaged run loses nothing.

One test per row of the issue's table, plus the pickle hole: a run folder from someone else must
never execute code on resume.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from retainrl import cli
from retainrl.config import ConfigError, load_config
from retainrl.data.loaders import LoaderError, load_benchmark
from retainrl.policy.model import ModelLoadError, resolve_model_path
from retainrl.train import checkpoint
from retainrl.train.config import RunConfig
from retainrl.train.runio import RunError

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "smoke.yaml"
# A run small enough to make several times: one phase of 2 steps, a checkpoint after each.
TINY = ["protocol.kind=single", "protocol.phases=[gen]", "protocol.steps_per_phase=2", "world.n_heldout=4",
        "world.n_train=8", "eval.max_new_tokens=24", "sampling.max_new_tokens=24", "checkpoint_every=1",
        "tensorboard=false", "sandbox_workers=1"]


def _main(capsys, *argv) -> tuple[int, str]:
    code = cli.main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _config_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, SMOKE, list(overrides))
    return str(e.value)


# ----------------------------------------------------------------------------- config files


def test_non_utf8_and_empty_yaml_exit_2_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(SMOKE.read_bytes().replace(b"name: smoke", "name: caf\u00e9".encode("latin-1")))
    code, err = _main(capsys, "train", bad, "--out", tmp_path / "r")
    assert code == 2 and "latin1.yaml" in err and "not UTF-8" in err and "line 2" in err
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    code, err = _main(capsys, "train", empty, "--out", tmp_path / "r")
    assert code == 2 and "empty.yaml" in err and "is empty" in err
    assert not (tmp_path / "r").exists(), "nothing may be trained or written for a bad config"


def test_bad_config_is_one_line_without_traceback_in_a_real_process(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    proc = subprocess.run([sys.executable, "-m", "retainrl", "train", str(empty), "--out", str(tmp_path / "r")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "empty.yaml" in proc.stderr


# ----------------------------------------------------------------------------- config values


@pytest.mark.parametrize("override,expect", [
    ("protocol.phases=[]", ["protocol.phases", "at least one phase", "[]"]),
    ("protocol.phases=[gen,repiar]", ["protocol.phases[1]", "'repiar'", "did you mean 'repair'", "gen, repair"]),
    ("sampling.max_new_tokens=0", ["sampling.max_new_tokens", ">= 1", "got 0"]),
    ("eval.max_new_tokens=-4", ["eval.max_new_tokens", ">= 1", "got -4"]),
    ("model.lora_r=0", ["model.lora_r", ">= 1", "got 0"]),
    ("model.dtype=float8", ["model.dtype", "'float8'", "'bfloat16'"]),
    ("model.device=tpu", ["model.device", "'tpu'", "auto, cpu, cuda or cuda:N"]),
    ("sampling.temperature=-1", ["sampling.temperature", ">= 0", "-1"]),
    ("sampling.top_p=0", ["sampling.top_p", "(0, 1]", "0.0"]),
    ("protocol.mixed_weights={gen: -1}", ["protocol.mixed_weights", ">= 0", "-1"]),
    ("protocol.mixed_weights={gne: 2}", ["protocol.mixed_weights.gne", "did you mean 'gen'"]),
    ("safety.eps_per_skill={resaon: 0.1}", ["safety.eps_per_skill.resaon", "did you mean 'reason'"]),
    ("eval.pass_k=[4]", ["eval.pass_k", "pass@4 needs eval.n_samples >= 4", "eval.n_samples=0"]),
    ("rl.samples_per_prompt=1", ["rl.samples_per_prompt", ">= 2", "got 1", "rl.algo=grpo"]),
    # found by the attack review: unbounded and non-finite values, unchecked fields, run names as paths
    ("rl.lr=.inf", ["rl.lr", "finite float", "inf"]),
    ("rl.gamma=.nan", ["rl.gamma", "finite float", "nan"]),
    ("rl.gamma=1.5", ["rl.gamma", "[0, 1]"]),
    ("method.ewc_lambda=-1", ["method.ewc_lambda", ">= 0"]),
    ("method.ewc_prompts=0", ["method.ewc_prompts", ">= 1"]),
    ("seed=99999999999999999999999", ["seed", "[0, 2**63)"]),
    ("name=../../elsewhere", ["name", "plain folder name"]),
    ("name=/tmp/abs", ["name", "plain folder name"]),
    ("protocol.steps_per_phase=0", ["protocol.steps_per_phase", ">= 1", "retainrl eval"]),
])
def test_bad_value_names_key_value_and_what_is_allowed(override, expect):
    msg = _config_error(override)
    for part in expect:
        assert part in msg, (part, msg)


def test_cross_field_rules_that_need_two_keys():
    assert "sum to 0" in _config_error("protocol.kind=mixed", "protocol.mixed_weights={gen: 0, repair: 0, reason: 0}")
    assert "rl.algo=rloo" in _config_error("rl.algo=rloo", "rl.samples_per_prompt=1")
    load_config(RunConfig, SMOKE, ["rl.algo=ppo", "rl.samples_per_prompt=1"])  # PPO has a value baseline: fine
    load_config(RunConfig, SMOKE, ["eval.pass_k=[1, 4]", "eval.n_samples=4"])
    assert "exactly one phase" in _config_error("protocol.kind=single")
    assert "finite sum" in _config_error("protocol.kind=mixed", "protocol.mixed_weights={gen: 1.0e+308, repair: 1.0e+308}")
    assert "only skill of a phase" in _config_error("protocol.kind=mixed", "protocol.phases=[gen]",
                                                    "protocol.mixed_weights={gen: 0}")
    # a JSONL source with a record field decides skills at load time: not refused before loading
    cfg = load_config(RunConfig, SMOKE, ["data.sources=[{name: jsonl, path: x.jsonl}]", "protocol.phases=[mine]"])
    assert cfg.known_skills() is None
    # a benchmark source's natural skill is known in advance
    assert "'gen'" in _config_error("data.sources=[{name: cruxeval, path: x}]", "data.world=false")


def test_config_checked_before_the_model_loads(tmp_path, monkeypatch):
    """A config built in code (not through load_config) is validated by the Trainer first thing."""
    from retainrl.train import trainer as trainer_mod

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the config was checked")

    monkeypatch.setattr(trainer_mod, "load_policy", boom)
    cfg = load_config(RunConfig, SMOKE)
    bad = dataclasses.replace(cfg, protocol=dataclasses.replace(cfg.protocol, phases=["gen", "nope"]))
    with pytest.raises(ConfigError, match=r"protocol.phases\[1\]: unknown skill 'nope'"):
        trainer_mod.Trainer(bad, tmp_path / "r")


# ----------------------------------------------------------------------------- model folders


def test_missing_model_directory_is_not_sent_to_the_hub(tmp_path, capsys):
    for name in (str(tmp_path / "no-such-model"), "./no-such-model", "a/b/no-such-model"):
        with pytest.raises(ModelLoadError, match="does not exist"):
            resolve_model_path(name)
    code, err = _main(capsys, "train", SMOKE, f"model.name_or_path={tmp_path / 'no-such-model'}",
                      "--out", tmp_path / "r")
    assert code == 2 and "no-such-model" in err and "does not exist" in err and "Traceback" not in err
    with pytest.warns(UserWarning, match="no such local directory.*trying it as a Hugging Face hub id"):
        assert resolve_model_path("Qwen/Qwen2.5-Coder-0.5B") == "Qwen/Qwen2.5-Coder-0.5B"  # hub id shape: kept


def test_empty_or_partial_model_directory_says_what_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError) as e:
        resolve_model_path(str(empty))
    assert "config.json" in str(e.value) and "weights" in str(e.value) and "tokenizer" in str(e.value)
    partial = tmp_path / "partial"
    shutil.copytree(resolve_model_path("bundled"), partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelLoadError) as e:
        resolve_model_path(str(partial))
    assert "weights" in str(e.value) and "config.json" not in str(e.value)
    a_file = tmp_path / "weights.bin"
    a_file.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="is a file"):
        resolve_model_path(str(a_file))


# ----------------------------------------------------------------------------- data files


def test_jsonl_that_is_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "mine.jsonl"
    good = json.dumps({"task_id": "a", "skill": "gen", "prompt": "p", "tests": "assert True"})
    path.write_bytes((good + "\n" + good + "\n").encode() + '{"prompt": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(LoaderError, match=r"mine.jsonl: line 3: not UTF-8 text: byte 0xe9 at column 16"):
        load_benchmark("jsonl", path)


# ----------------------------------------------------------------------------- run folders


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """One complete tiny run (2 steps, a checkpoint after each, so a previous one exists)."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    cfg = load_config(RunConfig, SMOKE, TINY)
    from retainrl.train.trainer import Trainer

    summary = Trainer(cfg, out).run()
    return cfg, out, summary


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(run, dst)
    (dst / "summary.json").unlink()
    return dst


def _resume(cfg, out: Path):
    from retainrl.train.trainer import Trainer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = Trainer(cfg, out).run()
    return summary, [str(w.message) for w in caught]


def _same(a: dict, b: dict) -> bool:
    drop = ("verifier_cpu_s",)
    return {k: v for k, v in a.items() if k not in drop} == {k: v for k, v in b.items() if k not in drop}


def _stable_lines(path: Path) -> list[dict]:
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not (k.startswith("time/") or k.endswith("_s"))} for r in recs]


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "flipped64"])
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, damage):
    cfg, run, summary = finished_run
    out = _copy(run, tmp_path)
    state = out / "ckpt" / "state.safetensors"
    data = state.read_bytes()
    if damage == "truncated":
        state.write_bytes(data[: len(data) // 3])
    elif damage == "random":
        state.write_bytes(os.urandom(len(data)))
    elif damage == "empty":
        state.write_bytes(b"")
    else:  # 64 bytes flipped in the tensor data (an optimizer moment, say): parses fine, numbers wrong
        mid = len(data) - 4096
        state.write_bytes(data[:mid] + bytes(b ^ 0xFF for b in data[mid:mid + 64]) + data[mid + 64:])
        with pytest.raises(checkpoint.CheckpointError, match="checksum"):
            checkpoint.load(state)
    resumed, warned = _resume(cfg, out)
    assert any("state.safetensors" in w and "previous checkpoint" in w for w in warned), warned
    assert _same(resumed, summary), "resuming from the previous checkpoint must reproduce the run"
    assert _stable_lines(out / "metrics.jsonl") == _stable_lines(run / "metrics.jsonl")


def test_both_checkpoints_damaged_stops_naming_the_files(finished_run, tmp_path, capsys):
    cfg, run, _ = finished_run
    out = _copy(run, tmp_path)
    for name in ("state.safetensors", "state.prev.safetensors"):
        (out / "ckpt" / name).write_bytes(b"\x00" * 100)
    code, err = _main(capsys, "train", SMOKE, *TINY, "--out", out)
    assert code == 2 and "Traceback" not in err
    assert "state.safetensors" in err and "state.prev.safetensors" in err


def test_checkpoint_holding_another_dict_is_named(finished_run, tmp_path, capsys):
    cfg, run, _ = finished_run
    out = _copy(run, tmp_path)
    for name in ("state.safetensors", "state.prev.safetensors"):
        checkpoint.save({"something": "else", "step": 3}, out / "ckpt" / name)
    code, err = _main(capsys, "train", SMOKE, *TINY, "--out", out)
    assert code == 2 and "state.safetensors" in err and "lacks 'adapter'" in err


def test_a_pickle_in_the_run_folder_is_never_executed(finished_run, tmp_path, capsys):
    """The old format executed a run folder's pickle on resume (torch.load weights_only=False)."""
    cfg, run, _ = finished_run
    out = _copy(run, tmp_path)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = pickle.dumps({"config": {}, "adapter": Payload()})
    for name in ("state.safetensors", "state.prev.safetensors"):
        (out / "ckpt" / name).write_bytes(evil)
    code, err = _main(capsys, "train", SMOKE, *TINY, "--out", out)
    assert code == 2 and "pickle" in err
    # an old-format run folder (only ckpt/state.pt) is refused the same way
    for name in ("state.safetensors", "state.prev.safetensors"):
        (out / "ckpt" / name).unlink()
    (out / "ckpt" / "state.pt").write_bytes(evil)
    code, err = _main(capsys, "train", SMOKE, *TINY, "--out", out)
    assert code == 2 and "state.pt" in err and "old pickle format" in err
    with pytest.raises(checkpoint.CheckpointError, match="pickle"):
        checkpoint.loads(evil, "x")
    assert not marker.exists(), "the pickle's payload ran"


def test_truncated_metrics_are_restored_from_the_checkpoint(finished_run, tmp_path):
    cfg, run, summary = finished_run
    out = _copy(run, tmp_path)
    metrics = out / "metrics.jsonl"
    text = metrics.read_text()
    metrics.write_text(text[: len(text) // 2])  # cut mid-line: most of the history gone
    resumed, warned = _resume(cfg, out)
    assert any("metrics.jsonl" in w and "restored" in w for w in warned), warned
    assert _stable_lines(metrics) == _stable_lines(run / "metrics.jsonl")
    assert (out / "metrics.jsonl.damaged").read_text() == text[: len(text) // 2]  # nothing lost
    assert _same(resumed, summary)


def test_damaged_phase_adapter_is_noticed(finished_run, tmp_path):
    cfg, run, _ = finished_run
    out = _copy(run, tmp_path)
    phase1 = out / "ckpt" / "phase1.safetensors"
    phase1.write_bytes(phase1.read_bytes()[:1000])
    _, warned = _resume(cfg, out)
    assert any("phase1.safetensors" in w and "damaged" in w for w in warned), warned


def test_another_config_in_the_same_out_is_one_line(finished_run, tmp_path, capsys):
    cfg, run, _ = finished_run
    out = _copy(run, tmp_path)
    code, err = _main(capsys, "train", SMOKE, *TINY, "rl.lr=0.01", "--out", out)
    assert code == 2 and "Traceback" not in err
    assert "different config" in err and "rl.lr" in err and str(out) in err


def test_disk_full_is_one_line_and_the_run_resumes(finished_run, tmp_path, capsys, monkeypatch):
    cfg, run, summary = finished_run
    out = tmp_path / "full"
    real_fsync, calls = os.fsync, {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 12:  # after a few metrics lines and the first checkpoints, the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, err = _main(capsys, "train", SMOKE, *TINY, "--out", out)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert code == 2 and "Traceback" not in err
    ours = [ln for ln in err.splitlines() if ln.startswith("retainrl:")]
    assert len(ours) == 1 and "No space left on device" in ours[0] and str(out / "ckpt") in ours[0], err
    assert ".new" not in ours[0] and ".tmp" not in ours[0], "name the file, not its temp copy"
    assert not (out / "summary.json").exists()
    code, _ = _main(capsys, "train", SMOKE, *TINY, "--out", out)  # space again: the same command resumes
    assert code == 0
    assert _same(json.loads((out / "summary.json").read_text()), summary)
    assert _stable_lines(out / "metrics.jsonl") == _stable_lines(run / "metrics.jsonl")


def test_checkpoint_round_trip_and_every_kind_of_damage_is_detected(tmp_path):
    import random

    import numpy as np
    import torch

    state = {"adapter": {"w": torch.randn(3, 4)}, "rng": {"python": random.getstate(), "numpy": np.random.get_state()},
             "opt": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"betas": (0.9, 0.99)}]},
             "empty": torch.zeros(0), "nested": [1, 2.5, None, "x", (1, (2,))]}
    path = tmp_path / "s.safetensors"
    checkpoint.save(state, path)
    back = checkpoint.load(path)
    assert torch.equal(back["adapter"]["w"], state["adapter"]["w"])
    assert back["rng"]["python"] == state["rng"]["python"] and back["opt"]["param_groups"][0]["betas"] == (0.9, 0.99)
    assert back["opt"]["state"][0]["step"].item() == 3.0 and back["nested"] == state["nested"]
    np.random.set_state(back["rng"]["numpy"])  # the numpy state is usable as it comes back
    data = path.read_bytes()
    for i in range(0, len(data), max(1, len(data) // 97)):  # a flipped byte anywhere is caught
        (tmp_path / "d").write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
        with pytest.raises(checkpoint.CheckpointError):
            checkpoint.load(tmp_path / "d")
    with pytest.raises(TypeError, match="cannot store a object at .x"):
        checkpoint.dumps({"x": object()})


def test_run_folder_that_cannot_be_created_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = _main(capsys, "train", SMOKE, *TINY, "--out", blocker / "run")
    assert code == 2 and "Traceback" not in err and str(blocker / "run") in err


def _forge(out: Path, edit) -> None:
    """Rewrite both checkpoints with a valid checksum but edited contents (what a forger can do)."""
    for name in ("state.safetensors", "state.prev.safetensors"):
        st = checkpoint.load(out / "ckpt" / name)
        edit(st)
        checkpoint.save(st, out / "ckpt" / name)


@pytest.mark.parametrize("edit,expect", [
    (lambda st: st["adapter"].update({k: v[:1] for k, v in list(st["adapter"].items())[:1]}), "expected a float tensor"),
    (lambda st: st["adapter"].update({k: v * float("nan") for k, v in list(st["adapter"].items())[:1]}), "NaN"),
    (lambda st: st["adapter"].update({"extra.weight": st["adapter"][next(iter(st["adapter"]))]}), "LoRA parameters"),
    (lambda st: st.update(global_step="2"), "'global_step' is '2'"),
    (lambda st: st.update(phase=99), "'phase' is 99"),
    (lambda st: st.update(R="abc"), "'R'"),
    (lambda st: st.update(model_fingerprint="0" * 64), "another model"),
    (lambda st: st.update(metrics=st["metrics"][:5]), "'metrics' does not decompress"),
    (lambda st: st["rng"].update(python=[1, 2, 3]), "does not fit this run"),
    (lambda st: st.update(config="not a config"), "'config' is a str"),
])
def test_forged_checkpoint_contents_are_refused_naming_the_key(finished_run, tmp_path, capsys, edit, expect):
    """A checksum proves a file is as written, not that this run wrote it: contents are checked too."""
    cfg, run, _ = finished_run
    out = _copy(run, tmp_path)
    _forge(out, edit)
    code, err = _main(capsys, "train", SMOKE, *TINY, "--out", out)
    assert code == 2 and "Traceback" not in err and expect in err, err
    assert "state.safetensors" in err


def test_kill_between_the_renames_resumes_from_the_complete_new_file(finished_run, tmp_path):
    cfg, run, summary = finished_run
    out = _copy(run, tmp_path)
    ckpt = out / "ckpt"
    os.replace(ckpt / "state.safetensors", ckpt / "state.safetensors.new")  # latest written, not yet renamed
    (ckpt / "state.prev.safetensors").write_bytes(b"junk")  # and the previous one unusable
    resumed, warned = _resume(cfg, out)
    assert any("state.safetensors.new" in w for w in warned), warned
    assert _same(resumed, summary)


def test_a_damaged_latest_is_kept_aside_and_never_rotated_over_the_good_previous(finished_run, tmp_path):
    cfg, run, _ = finished_run
    out = _copy(run, tmp_path)
    ckpt = out / "ckpt"
    (ckpt / "state.safetensors").write_bytes(b"damaged once")
    found = checkpoint.load_latest(ckpt / "state.safetensors")
    assert found is not None and found[1] == ckpt / "state.prev.safetensors"
    assert (ckpt / "state.safetensors.damaged").read_bytes() == b"damaged once"
    assert not (ckpt / "state.safetensors").exists()  # so the next save does not rotate it into .prev
    (ckpt / "state.safetensors").write_bytes(b"damaged twice")
    with pytest.warns(UserWarning):
        checkpoint.load_latest(ckpt / "state.safetensors")
    assert (ckpt / "state.safetensors.damaged.1").read_bytes() == b"damaged twice"  # the first kept too


def test_restored_run_files_keep_ordinary_permissions(finished_run, tmp_path):
    cfg, run, _ = finished_run
    out = _copy(run, tmp_path)
    metrics = out / "metrics.jsonl"
    metrics.write_text("")
    _resume(cfg, out)
    umask = os.umask(0)
    os.umask(umask)
    for path in (metrics, out / "summary.json", out / "ckpt" / "state.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_settings_that_do_nothing_warn():
    with pytest.warns(UserWarning, match="protects nothing"):
        load_config(RunConfig, SMOKE, ["protocol.kind=single", "protocol.phases=[gen]", "safety.enabled=true"])
    with pytest.warns(UserWarning, match="replays nothing"):
        load_config(RunConfig, SMOKE, ["protocol.kind=single", "protocol.phases=[gen]", "method.name=replay"])
    # mixed protects every skill of its one phase (safety.layer.protected_skills): no warning there
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_config(RunConfig, SMOKE, ["protocol.kind=mixed", "protocol.phases=[gen,repair]", "safety.enabled=true"])


def test_ckpt_that_is_a_file_is_named_before_anything_runs(tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ckpt").write_text("x")
    code, err = _main(capsys, "train", SMOKE, *TINY, "--out", tmp_path / "r")
    assert code == 2 and "ckpt" in err and "is a file" in err
