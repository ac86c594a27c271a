"""Typed config machinery: YAML + overrides -> nested dataclasses, errors, round trip, docs.

The module uses `from __future__ import annotations` on purpose: every annotation below is a
string that config.py must resolve with typing.get_type_hints.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import pytest

from retainrl.config import (
    ConfigError,
    config_hash,
    describe,
    dump_yaml,
    load_config,
    missing_help,
    option,
    to_dict,
    validate,
)

# ---------------------------------------------------------------- an example experiment config


@dataclass
class OptimConfig:
    """Optimizer settings."""

    lr: float = option(1e-5, "Learning rate.", check=lambda v: v > 0, must="be > 0")
    betas: tuple[float, float] = option((0.9, 0.999), "Adam betas.")
    warmup_steps: int = option(0, "Linear warmup steps.", check=lambda v: v >= 0, must="be >= 0")


@dataclass
class LoraConfig:
    """LoRA adapter."""

    r: int = option(8, "Rank.")
    targets: list[str] = option(["q_proj", "v_proj"], "Module names to adapt.")


@dataclass
class ProtocolConfig:
    """Skill schedule."""

    kind: Literal["sequential", "mixed"] = option("sequential", "How skills are scheduled.")
    phases: list[str | list[str]] = option(["gen", "repair"], "Skill, or list of skills, per phase.")
    steps_per_phase: int = option(100, "RL steps in each phase.")


@dataclass
class ExampleConfig:
    """A small experiment config used to test the machinery."""

    name: str = option("run", "Run name.", hash=False)
    seed: int = option(0, "Random seed.")
    max_new_tokens: Optional[int] = option(None, "Generation cap; null for the model's own.")
    bf16: bool = option(False, "Use bfloat16.")
    temperature: float | None = option(1.0, "Sampling temperature.")
    rl: OptimConfig = option(OptimConfig(), "Policy optimizer.")
    lora: LoraConfig | None = option(None, "LoRA adapter; null for full fine-tuning.")
    protocol: ProtocolConfig = option(ProtocolConfig(), "Which skills are trained when.")
    reward_weights: dict[str, float] = option({"gen": 1.0}, "Reward weight per skill.")
    tags: tuple[str, ...] = option((), "Free-form labels.")
    out_dir: Path = option(Path("runs"), "Where outputs go.", hash=False)


@dataclass
class Required:
    """A config with a required field."""

    model: str = option(help="Model name or path.")
    steps: int = option(10, "Steps.")


@dataclass
class Validated:
    """A config whose class checks a relation between fields."""

    lo: int = option(0, "Lower bound.")
    hi: int = option(1, "Upper bound.")

    def __post_init__(self):
        if self.lo > self.hi:
            raise ValueError(f"lo ({self.lo}) must not exceed hi ({self.hi})")


@dataclass
class PhaseSpec:
    """One phase of a schedule."""

    skill: str = option("gen", "Skill trained in the phase.")
    steps: int = option(10, "RL steps.", check=lambda v: v > 0, must="be > 0")


@dataclass
class Schedule:
    """Sections with non-class defaults and a list of sections."""

    rl: OptimConfig = option(OptimConfig(lr=3e-5), "Optimizer, default lr differs from OptimConfig's.")
    phases: list[PhaseSpec] = option([PhaseSpec()], "The phases, in order.")


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


# ---------------------------------------------------------------- documentation


@pytest.mark.parametrize("cls", [ExampleConfig, Required, Validated, Schedule])
def test_every_field_has_help(cls):
    """Add new config classes here: the test fails if any field (nested included) lacks help."""
    assert missing_help(cls) == []


def test_missing_help_is_detected():
    @dataclass
    class Undocumented:
        a: int = 1
        b: int = option(2, "")

    assert missing_help(Undocumented) == ["a", "b"]


def test_describe_lists_every_field_with_type_default_help():
    text = describe(ExampleConfig)
    assert text.splitlines()[0] == "ExampleConfig: A small experiment config used to test the machinery."
    for line in [
        "  seed: int = 0",
        "  max_new_tokens: int | null = null",
        "  rl: OptimConfig",
        "    rl.lr: float = 1.0e-05",
        "        Learning rate. Must be > 0.",
        "    rl.betas: tuple[float, float] = [0.9, 0.999]",
        "  lora: LoraConfig | null = null",
        "    lora.targets: list[str] = [q_proj, v_proj]",
        "    protocol.kind: 'sequential' | 'mixed' = sequential",
        "    protocol.phases: list[str | list[str]] = [gen, repair]",
        "  reward_weights: dict[str, float] = {gen: 1.0}",
        "  out_dir: Path = runs",
    ]:
        assert line in text.splitlines(), line
    assert "  model: str (required)" in describe(Required)


# ---------------------------------------------------------------- loading


def test_defaults_and_fresh_mutable_defaults():
    a, b = load_config(ExampleConfig), ExampleConfig()
    assert a == b and a.rl.lr == 1e-5 and a.protocol.phases == ["gen", "repair"]
    a.protocol.phases.append("reason")
    assert ExampleConfig().protocol.phases == ["gen", "repair"]  # defaults are copied per instance


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, """
seed: 3
rl:
  lr: 1e-4            # a string in YAML 1.1; coerced to float
  betas: [0.8, 0.9]
protocol:
  phases: [gen, repair, [gen, repair]]
tags: [a, b]
""")
    cfg = load_config(ExampleConfig, path, [
        "rl.warmup_steps=5",
        "protocol.kind=mixed",
        "lora.r=16",                    # creates the optional section with defaults
        "name=2024",                    # a str field keeps the text, not the int
        "bf16=true",
        "max_new_tokens=256",
        "temperature=null",
        "reward_weights.repair=0.5",    # a dotted key into a dict field
    ])
    assert cfg.seed == 3 and cfg.rl.lr == 1e-4 and cfg.rl.betas == (0.8, 0.9) and cfg.rl.warmup_steps == 5
    assert cfg.protocol.phases == ["gen", "repair", ["gen", "repair"]] and cfg.protocol.kind == "mixed"
    assert cfg.lora == LoraConfig(r=16) and cfg.name == "2024" and cfg.bf16 is True
    assert cfg.max_new_tokens == 256 and cfg.temperature is None
    assert cfg.reward_weights == {"gen": 1.0, "repair": 0.5} and cfg.tags == ("a", "b")


def test_override_list_and_section_mapping():
    cfg = load_config(ExampleConfig, {"rl": {"lr": 0.1}},
                      ["protocol.phases=[gen,repair]", "rl={warmup_steps: 7}"])
    assert cfg.protocol.phases == ["gen", "repair"]
    assert cfg.rl.lr == 0.1 and cfg.rl.warmup_steps == 7  # a mapping override merges into the section


def test_later_override_wins_and_dict_input_is_not_mutated():
    data = {"seed": 1}
    cfg = load_config(ExampleConfig, data, ["seed=2", "seed=4"])
    assert cfg.seed == 4 and data == {"seed": 1}


def test_partial_section_keeps_the_field_default():
    # Schedule.rl defaults to OptimConfig(lr=3e-5): setting another key must not reset lr to 1e-5
    assert load_config(Schedule, {"rl": {"warmup_steps": 2}}).rl == OptimConfig(lr=3e-5, warmup_steps=2)
    assert load_config(Schedule, {}, ["rl.warmup_steps=2"]).rl == OptimConfig(lr=3e-5, warmup_steps=2)


def test_list_of_sections():
    cfg = load_config(Schedule, {"phases": [{"skill": "gen"}, {"skill": "repair", "steps": 5}]})
    assert cfg.phases == [PhaseSpec("gen", 10), PhaseSpec("repair", 5)]
    with pytest.raises(ConfigError, match=r"phases\[1\]\.steps: must be > 0, got 0"):
        load_config(Schedule, {"phases": [{}, {"steps": 0}]})
    with pytest.raises(ConfigError, match=r"unknown key 'phases\[0\]\.skil'; did you mean 'phases\[0\]\.skill'"):
        load_config(Schedule, {"phases": [{"skil": "gen"}]})
    text = describe(Schedule).splitlines()
    assert "    phases[].steps: int = 10" in text
    assert "    rl.lr: float = 3.0e-05" in text  # the field's default, not OptimConfig's


def test_coercions():
    cfg = load_config(ExampleConfig, {"seed": "7", "rl": {"lr": 1, "warmup_steps": 1e3},
                                      "bf16": "yes", "out_dir": "/tmp/x"})
    assert cfg.seed == 7 and cfg.rl.lr == 1.0 and isinstance(cfg.rl.lr, float)
    assert cfg.rl.warmup_steps == 1000 and cfg.bf16 is True and cfg.out_dir == Path("/tmp/x")


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("data, overrides, pieces", [
    ({"rl": {"lr": "fast"}}, [], ["rl.lr", "'fast'", "expected float"]),
    ({}, ["rl.lr=fast"], ["rl.lr", "'fast'", "expected float", "override 'rl.lr=fast'"]),
    ({"seed": 1.5}, [], ["seed", "1.5", "expected int"]),
    ({"seed": True}, [], ["seed", "True", "expected int"]),
    ({"bf16": 1}, [], ["bf16", "expected bool"]),
    ({"name": 5}, [], ["name", "expected str"]),
    ({"max_new_tokens": "many"}, [], ["max_new_tokens", "'many'", "int | null"]),
    ({"protocol": {"kind": "mixd"}}, [], ["protocol.kind", "'mixd'", "one of 'sequential', 'mixed'",
                                          "did you mean 'mixed'?"]),
    ({"protocol": {"phases": "gen"}}, [], ["protocol.phases", "'gen'", "list[str | list[str]]"]),
    ({"protocol": {"phases": ["gen", ["repair", 3]]}}, [], ["protocol.phases[1][1]", "3", "expected str"]),
    ({"rl": {"betas": [0.9]}}, [], ["rl.betas", "2 items"]),
    ({"rl": 0.1}, [], ["rl", "0.1", "mapping of OptimConfig fields"]),
    ({"reward_weights": {"gen": "high"}}, [], ["reward_weights.gen", "'high'", "float"]),
    ({}, ["lora.r=big"], ["lora.r", "'big'", "expected int"]),
    ({"rl": {"lr": -1.0}}, [], ["rl.lr: must be > 0, got -1.0"]),
    ({}, ["rl.warmup_steps=-3"], ["rl.warmup_steps: must be >= 0, got -3"]),
])
def test_bad_values_name_key_value_and_expectation(data, overrides, pieces):
    with pytest.raises(ConfigError) as info:
        load_config(ExampleConfig, data, overrides)
    for piece in pieces:
        assert piece in str(info.value), (piece, str(info.value))


@pytest.mark.parametrize("data, overrides, pieces", [
    ({"sed": 1}, [], ["unknown key 'sed'", "did you mean 'seed'?"]),
    ({"rl": {"lrr": 1}}, [], ["unknown key 'rl.lrr'", "did you mean 'rl.lr'?", "lr, betas, warmup_steps"]),
    ({}, ["rl.lrr=1"], ["unknown key 'rl.lrr'", "did you mean 'rl.lr'?", "override 'rl.lrr=1'"]),
    ({}, ["protocl.kind=mixed"], ["unknown key 'protocl'", "did you mean 'protocol'?"]),
    ({"warmup_steps": 3}, [], ["unknown key 'warmup_steps'", "did you mean 'rl.warmup_steps'?"]),
    ({}, ["seed.x=1"], ["'seed' has type int, it has no key 'x'"]),
    ({}, ["seed"], ["not of the form key=value"]),
])
def test_unknown_keys(data, overrides, pieces):
    with pytest.raises(ConfigError) as info:
        load_config(ExampleConfig, data, overrides)
    for piece in pieces:
        assert piece in str(info.value), (piece, str(info.value))


def test_config_error_is_value_error_and_carries_key():
    with pytest.raises(ValueError) as info:
        load_config(ExampleConfig, {}, ["protocol.steps_per_phase=x"])
    assert isinstance(info.value, ConfigError) and info.value.key == "protocol.steps_per_phase"


def test_file_errors_name_the_file(tmp_path):
    bad = write(tmp_path, "rl:\n  lr: [1, 2\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in config file '.*cfg.yaml'"):
        load_config(ExampleConfig, bad)
    dup = write(tmp_path, "seed: 1\nseed: 2\n")
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config(ExampleConfig, dup)
    top = write(tmp_path, "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping of keys at the top level"):
        load_config(ExampleConfig, top)
    with pytest.raises(ConfigError, match="cannot read config file '.*nope.yaml'"):
        load_config(ExampleConfig, tmp_path / "nope.yaml")
    typo = write(tmp_path, "rl:\n  lr: fast\n")
    with pytest.raises(ConfigError, match=r"rl.lr.*'fast'.*\(loading .*cfg.yaml\)"):
        load_config(ExampleConfig, typo)
    # An empty file (or one with comments only) is an error, not "every default" (issue 14).
    for empty in ("", "# just a comment\n", "\n\n"):
        with pytest.raises(ConfigError, match=r"config file '.*cfg.yaml' is empty"):
            load_config(ExampleConfig, write(tmp_path, empty))
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("seed: 1\nname: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"'.*latin1.yaml' is not UTF-8 text: byte 0xe9 at line 2, column 10"):
        load_config(ExampleConfig, latin1)


def test_required_and_post_init_errors():
    with pytest.raises(ConfigError, match="missing required key 'model' \\(str\\)"):
        load_config(Required, {})
    assert load_config(Required, {}, ["model=tiny"]).model == "tiny"
    with pytest.raises(ConfigError, match=r"Validated: lo \(3\) must not exceed hi \(1\)"):
        load_config(Validated, {"lo": 3})


def test_validate_a_config_built_in_code():
    cfg = ExampleConfig(rl=OptimConfig(lr=0.0))
    with pytest.raises(ConfigError, match="rl.lr: must be > 0, got 0.0"):
        validate(cfg)


# ---------------------------------------------------------------- saving


def test_dump_then_load_round_trips(tmp_path):
    cfg = load_config(ExampleConfig, {}, ["protocol.phases=[gen,[gen,repair]]", "lora.targets=[q]",
                                          "rl.lr=3e-6", "tags=[x]", "name=2024", "max_new_tokens=64"])
    path = dump_yaml(cfg, tmp_path / "run" / "config.yaml")
    assert path.read_text().startswith(f"# ExampleConfig, config_hash {config_hash(cfg)}\n")
    back = load_config(ExampleConfig, path)
    assert back == cfg and back.name == "2024" and back.rl.betas == (0.9, 0.999)
    assert to_dict(back) == to_dict(cfg) and to_dict(cfg)["rl"]["betas"] == [0.9, 0.999]
    assert load_config(ExampleConfig, cfg, ["seed=5"]).seed == 5  # an instance can be the base too


def test_config_hash():
    base = ExampleConfig()
    assert config_hash(base) == config_hash(ExampleConfig()) and len(config_hash(base)) == 12
    assert config_hash(dataclasses.replace(base, seed=1)) != config_hash(base)
    assert config_hash(dataclasses.replace(base, rl=OptimConfig(lr=2e-5))) != config_hash(base)
    # fields declared hash=False (run name, output directory) do not change the hash
    assert config_hash(dataclasses.replace(base, name="other", out_dir=Path("elsewhere"))) == config_hash(base)


def test_cli_overrides_may_follow_options(monkeypatch):
    """`retainrl sweep CFG --grid k=a,b x=1 --out d y=2` and `retainrl train CFG --out d k=v`:
    overrides after options are kept, not rejected (argparse alone stops at the first option)."""
    import pytest

    from retainrl import cli
    from retainrl.train.sweep import build_parser

    a = build_parser().parse_intermixed_args(["c.yaml", "--grid", "a=1,2", "x=1", "--out", "o", "y=2"])
    assert a.overrides == ["x=1", "y=2"] and a.grid == ["a=1,2"]
    seen = {}
    monkeypatch.setattr(cli, "cmd_train", lambda args: seen.update(overrides=args.overrides, out=args.out) or 0)
    assert cli.main(["train", "c.yaml", "--out", "d", "rl.lr=1e-3"]) == 0
    assert seen == {"overrides": ["rl.lr=1e-3"], "out": "d"}
    with pytest.raises(SystemExit):
        cli.main(["train", "c.yaml", "--bogus"])
