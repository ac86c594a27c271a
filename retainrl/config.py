"""Typed configs: nested dataclasses loaded from YAML plus `key=value` overrides.

The convention: a config is a `@dataclass` whose every field is declared with `option(...)`,
which stores the help text (and an optional validator) in the field's metadata:

    @dataclass
    class RLConfig:
        lr: float = option(1e-5, "Policy learning rate.", check=lambda v: v > 0, must="be > 0")
        phases: list[str | list[str]] = option(["gen", "repair"], "Skill(s) trained per phase.")

    cfg = load_config(ExperimentConfig, "configs/seq.yaml",
                      ["rl.lr=1e-4", "protocol.phases=[gen,repair]"])

Help lives in the field's metadata rather than in comments, so `describe(cls)` can print it
for `retainrl train --help-config` and `missing_help(cls)` can fail a test when a field is
undocumented. `option(d, "text", check=f, must="be > 0")` is shorthand for
`field(default=d, metadata={"help": "text", "check": f, "must": "be > 0"})`; both work.

Types understood: int, float, bool, str, pathlib.Path, Any, Optional[...] / X | None, other
unions (arms tried in order), Literal[...] (choices), list[X], tuple[X, ...], tuple[X, Y],
dict / dict[K, V], and nested dataclasses (also inside lists, dicts and Optionals). Annotations
may be strings (`from __future__ import annotations`): they are resolved with
typing.get_type_hints, so the types must be importable from the class's module.

Coercion is strict except where YAML gets in the way: a float accepts an int and a numeric
string ("1e-4" is a string in YAML 1.1); an int accepts an integral float or string ("1e6");
a bool accepts true/false/yes/no/on/off strings; a str field given `name=2024` on the command
line keeps the text "2024". Everything else that does not fit raises ConfigError (a ValueError)
naming the full dotted key, the bad value and what was expected.

Merging: a YAML section that gives some keys keeps the field's default for the others (the
field's default instance, which may differ from the section class's defaults); a dotted
override edits one key of the current value (`reward_weights.repair=0.5` adds a key); an
override whose value is a mapping is merged into a section; any other value replaces. Field
checks run after the whole config is built, on defaults too (`validate`); then each section's
`check_config(prefix)` method, when it defines one, checks the rules that tie several fields
together (raising ConfigError with the full dotted key).

Files: a config file must be UTF-8 text holding a mapping; an empty file is an error (it would
silently mean "every default"), and so is text that is not UTF-8 (the message names the line).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import hashlib
import json
import math
import os
import pathlib
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, Union, get_args, get_origin

import yaml

MISSING = dataclasses.MISSING
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


class ConfigError(ValueError):
    """A config value, key or file is wrong. `key` is the full dotted key, when there is one."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


# ----------------------------------------------------------------------------- declaring fields


def option(default: Any = MISSING, help: str = "", *, default_factory: Callable[[], Any] | Any = MISSING,
           check: Callable[[Any], bool] | None = None, must: str | None = None, hash: bool = True,
           **field_kwargs) -> Any:
    """A dataclass field with help text and an optional validator.

    default:   the default value; a list, dict, set or dataclass instance is deep-copied per
               instance (no need for default_factory).
    help:      one or two sentences shown by `describe`.
    check:     predicate on the final value; False (or an exception) is a ConfigError
               "<key>: must <must>, got <value>".
    must:      what `check` requires, phrased after "must", e.g. "be > 0".
    hash:      False to leave the field out of `config_hash` (output paths, run names).
    """
    metadata = dict(field_kwargs.pop("metadata", {}) or {})
    metadata["help"] = help
    if check is not None:
        metadata["check"] = check
        metadata["must"] = must or "pass its check"
    if not hash:
        metadata["hash"] = False
    if default is not MISSING and default_factory is MISSING and _is_mutable(default):
        default, default_factory = MISSING, functools.partial(copy.deepcopy, default)
    return dataclasses.field(default=default, default_factory=default_factory, metadata=metadata,
                             **field_kwargs)


def _is_mutable(value) -> bool:
    return _is_instance(value) or isinstance(value, (list, dict, set))


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except NameError as e:
        raise TypeError(f"cannot resolve the annotations of {cls.__qualname__}: {e} (config classes "
                        "and the types they use must be importable from their module)") from e


def _init_fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ----------------------------------------------------------------------------- type names


def type_name(tp) -> str:
    """Readable form of a type annotation, YAML-flavoured: 'int | null', "'seq' | 'mixed'", 'list[str]'."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is type(None) or tp is None:
        return "null"
    if tp is Any:
        return "any"
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        inner = ", ".join("..." if a is Ellipsis else type_name(a) for a in args)
        return f"{name}[{inner}]" if args else name
    return getattr(tp, "__name__", str(tp))


def _dataclass_of(tp) -> type | None:
    """The dataclass in `tp` when tp is a dataclass or Optional[dataclass], else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if get_origin(tp) in (Union, types.UnionType):
        arms = [a for a in get_args(tp) if a is not type(None)]
        if len(arms) == 1:
            return _dataclass_of(arms[0])
    return None


# ----------------------------------------------------------------------------- coercion


def _bad(key: str, value, expected: str, hint: str = "") -> ConfigError:
    msg = f"{key or '<config>'}: expected {expected}, got {value!r} ({type(value).__name__})"
    return ConfigError(msg + (f"; {hint}" if hint else ""), key)


def _coerce(tp, v, key: str):
    """`v` converted to type `tp`, or ConfigError naming `key`."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any or tp is object:
        return v
    if tp is type(None) or tp is None:
        if v is None:
            return None
        raise _bad(key, v, "null")
    if origin is Literal:
        for choice in args:
            if type(v) is type(choice) and v == choice:
                return choice
        close = difflib.get_close_matches(str(v), [str(a) for a in args], n=1) if isinstance(v, str) else []
        raise _bad(key, v, f"one of {', '.join(repr(a) for a in args)}",
                   f"did you mean {close[0]!r}?" if close else "")
    if origin in (Union, types.UnionType):
        return _coerce_union(tp, args, v, key)
    if tp is bool:
        if isinstance(v, bool):
            return v
        if isinstance(v, str) and v.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[v.strip().lower()]
        raise _bad(key, v, "bool (true or false)")
    if tp is int:
        return _coerce_int(v, key)
    if tp is float:  # finite only: a NaN/inf setting breaks a run, and NaN != NaN breaks its resume
        out = None
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out = float(v) if abs(v) < 2 ** 1024 else float("inf")
        elif isinstance(v, str):
            try:
                out = float(v.strip())
            except ValueError:
                pass
        if out is not None and math.isfinite(out):
            return out
        raise _bad(key, v, "a finite float" if out is not None else "float")
    if tp is str:
        if isinstance(v, str):
            return v
        raise _bad(key, v, "str", "quote it in YAML")
    if tp in (pathlib.Path, pathlib.PurePath):
        if isinstance(v, (str, os.PathLike)):
            return pathlib.Path(v)
        raise _bad(key, v, "a path (str)")
    if dataclasses.is_dataclass(tp):
        if isinstance(v, tp):
            return copy.deepcopy(v)
        if isinstance(v, Mapping):
            return _build(tp, v, key)
        raise _bad(key, v, f"a mapping of {tp.__name__} fields")
    if tp is list or origin is list:
        if not isinstance(v, (list, tuple)):
            raise _bad(key, v, type_name(tp))
        item = args[0] if args else Any
        return [_coerce(item, x, f"{key}[{i}]") for i, x in enumerate(v)]
    if tp is tuple or origin is tuple:
        return _coerce_tuple(tp, args, v, key)
    if tp is dict or origin is dict:
        if not isinstance(v, Mapping):
            raise _bad(key, v, type_name(tp))
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, f"{key}.{k}"): _coerce(vt, x, f"{key}.{k}") for k, x in v.items()}
    raise TypeError(f"{key}: unsupported config field type {tp!r}")


def _coerce_union(tp, args, v, key: str):
    if v is None and type(None) in args:
        return None
    errors = []
    for arm in args:
        if arm is type(None):
            continue
        try:
            return _coerce(arm, v, key)
        except ConfigError as e:
            errors.append(e)
    deeper = [e for e in errors if e.key != key]  # an arm that matched the shape but not an item
    if len(deeper) == 1:
        raise deeper[0]
    raise _bad(key, v, type_name(tp))


def _coerce_int(v, key: str) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str):
        try:
            return int(v.strip())
        except ValueError:
            try:
                v = float(v.strip())
            except ValueError:
                raise _bad(key, v, "int") from None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    raise _bad(key, v, "int")


def _coerce_tuple(tp, args, v, key: str) -> tuple:
    if not isinstance(v, (list, tuple)):
        raise _bad(key, v, type_name(tp))
    if not args:
        return tuple(v)
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(args[0], x, f"{key}[{i}]") for i, x in enumerate(v))
    if len(v) != len(args):
        raise _bad(key, v, f"{len(args)} items ({type_name(tp)})")
    return tuple(_coerce(a, x, f"{key}[{i}]") for i, (a, x) in enumerate(zip(args, v)))


def _all_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key under `cls` (sections and leaves)."""
    out = []
    for f in _init_fields(cls):
        key = _join(prefix, f.name)
        out.append(key)
        sub = _dataclass_of(_hints(cls)[f.name])
        if sub is not None:
            out.extend(_all_keys(sub, key))
    return out


def _unknown_key(cls: type, prefix: str, name) -> ConfigError:
    names = [f.name for f in _init_fields(cls)]
    full = _join(prefix, str(name))
    close = difflib.get_close_matches(str(name), names, n=1)
    if close:
        hint = f"did you mean {_join(prefix, close[0])!r}?"
    else:  # a key given at the wrong level, e.g. `lr` for `rl.lr`
        deeper = [k for k in _all_keys(cls) if k.rsplit(".", 1)[-1] == str(name)]
        hint = f"did you mean {_join(prefix, deeper[0])!r}?" if deeper else ""
    where = f"in {prefix!r}" if prefix else "at the top level"
    msg = f"unknown key {full!r}" + (f"; {hint}" if hint else "") + f" (keys {where}: {', '.join(names)})"
    return ConfigError(msg, full)


def _is_instance(value) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _field_default(f: dataclasses.Field):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def _build(cls: type, data: Mapping, prefix: str):
    hints = _hints(cls)
    fields = {f.name: f for f in _init_fields(cls)}
    for name in data:
        if name not in fields:
            raise _unknown_key(cls, prefix, name)
    kwargs = {}
    for name, f in fields.items():
        key = _join(prefix, name)
        if name in data:
            value, default = data[name], _field_default(f)
            if isinstance(value, Mapping) and _dataclass_of(hints[name]) and _is_instance(default):
                value = _merged(to_dict(default), value)  # a partial section keeps the field's defaults
            kwargs[name] = _coerce(hints[name], value, key)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"missing required key {key!r} ({type_name(hints[name])})", key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:  # e.g. a check in the class's __post_init__
        raise ConfigError(f"{prefix or cls.__name__}: {e}", prefix or None) from e


# ----------------------------------------------------------------------------- validation


def validate(cfg, prefix: str = "") -> None:
    """Run every field's `check` (recursively), then each section's `check_config(prefix)`
    cross-field rules (inner sections first); ConfigError naming the first key that fails."""
    for f in dataclasses.fields(cfg):
        key, value = _join(prefix, f.name), getattr(cfg, f.name)
        check = f.metadata.get("check")
        if check is not None:
            must = f.metadata.get("must", "pass its check")
            try:
                ok = bool(check(value))
            except Exception as e:  # noqa: BLE001 - a crashing check is a failed check
                raise ConfigError(f"{key}: must {must}, got {value!r} ({e!r})", key) from e
            if not ok:
                raise ConfigError(f"{key}: must {must}, got {value!r}", key)
        for sub_key, sub in _nested_instances(value, key):
            validate(sub, sub_key)
    hook = getattr(cfg, "check_config", None)
    if callable(hook):
        hook(prefix)


def _nested_instances(value, key: str):
    if _is_instance(value):
        yield key, value
    elif isinstance(value, (list, tuple)):
        for i, x in enumerate(value):
            yield from _nested_instances(x, f"{key}[{i}]")
    elif isinstance(value, dict):
        for k, x in value.items():
            yield from _nested_instances(x, f"{key}.{k}")


# ----------------------------------------------------------------------------- loading


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key repeated in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable key; let the base class report it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}",
                                                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | os.PathLike, allow_empty: bool = False) -> dict:
    """The top-level mapping of a YAML file; ConfigError naming the file when it cannot be read,
    is not UTF-8, is not YAML, holds no keys (unless `allow_empty`: then {}) or is not a mapping."""
    try:
        raw = pathlib.Path(path).read_bytes()
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a directory") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {str(path)!r}: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text: byte 0x{raw[e.start]:02x} at line {line}, "
                          f"column {col} (save it as UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}:" if mark is not None else ""
        what = " ".join(str(x) for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise ConfigError(f"malformed YAML in config file {str(path)!r}:{where} {what}") from None
    if data is None or data == {}:
        if allow_empty:
            return {}
        raise ConfigError(f"config file {str(path)!r} is empty: it sets no keys. An empty file is not taken to "
                          f"mean the defaults; give the keys you want (see configs/smoke.yaml, or "
                          f"`retainrl train --help-config`)")
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys at the top level, "
                          f"got {type(data).__name__}")
    return data


def _parse_override(text: str) -> tuple[str, str]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value (e.g. rl.lr=1e-4)")
    return key.strip(), raw


def _override_value(tp, raw: str, key: str, text: str):
    """The YAML-parsed value of an override, or its raw text when only the text fits `tp`."""
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError:
        parsed = raw
    if _dataclass_of(tp) is not None and isinstance(parsed, Mapping):
        return parsed  # merged into the section; checked when the whole config is built
    try:
        _coerce(tp, parsed, key)
        return parsed
    except ConfigError as e:
        if not isinstance(parsed, str):
            try:  # `name=2024` for a str field, a Literal choice that looks like a number, ...
                _coerce(tp, raw, key)
                return raw
            except ConfigError:
                pass
        raise ConfigError(f"{e} (from override {text!r})", e.key) from None


def _merged(base: dict, update: Mapping) -> dict:
    """`base` updated in place by `update`, recursing into mappings present in both."""
    for k, v in update.items():
        if isinstance(v, Mapping) and isinstance(base.get(k), dict):
            _merged(base[k], v)
        else:
            base[k] = copy.deepcopy(v)
    return base


def apply_override(cls: type, data: dict, text: str) -> None:
    """Apply one `dotted.key=value` override to the raw dict `data` of config class `cls`."""
    key, raw = _parse_override(text)
    parts = key.split(".")
    tp, node, prefix = cls, data, ""
    for i, name in enumerate(parts):
        dc = _dataclass_of(tp)
        default = MISSING
        if dc is not None:
            fields = {f.name: f for f in _init_fields(dc)}
            if name not in fields:
                e = _unknown_key(dc, prefix, name)
                raise ConfigError(f"{e} (from override {text!r})", e.key)
            child_tp, default = _hints(dc)[name], _field_default(fields[name])
        elif tp is dict or get_origin(tp) is dict:
            child_tp = get_args(tp)[1] if get_args(tp) else Any
        else:
            raise ConfigError(f"override {text!r}: {prefix!r} has type {type_name(tp)}, it has no "
                              f"key {name!r}", prefix)
        full = _join(prefix, name)
        if i == len(parts) - 1:
            value = _override_value(child_tp, raw, full, text)
            if isinstance(value, Mapping) and isinstance(node.get(name), dict) and _dataclass_of(child_tp):
                _merged(node[name], value)
            else:
                node[name] = value
            return
        child = node[name] if name in node else default  # a dotted key edits the current value
        if _is_instance(child):
            child = to_dict(child)
        child = copy.deepcopy(child) if isinstance(child, dict) else {}
        node[name] = child
        tp, node, prefix = child_tp, child, full


def load_config(cls: type, path_or_dict: str | os.PathLike | Mapping | None = None,
                overrides: Iterable[str] = ()):
    """Build and validate a `cls` instance from a YAML file (or a dict, or nothing: defaults),
    then `key=value` overrides applied in order (dotted keys reach nested sections).

    Raises ConfigError for unknown keys, bad values, failed checks and unreadable files.
    """
    source = None
    if path_or_dict is None:
        data = {}
    elif isinstance(path_or_dict, (str, os.PathLike)):
        source = str(path_or_dict)
        data = read_yaml(path_or_dict)
    elif isinstance(path_or_dict, Mapping):
        data = copy.deepcopy(dict(path_or_dict))
    elif isinstance(path_or_dict, cls):
        data = to_dict(path_or_dict)
    else:
        raise TypeError(f"load_config takes a path, a dict or a {cls.__name__}, "
                        f"got {type(path_or_dict).__name__}")
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'key=value' strings, not one string")
    for text in overrides:
        apply_override(cls, data, text)
    try:
        cfg = _build(cls, data, "")
        validate(cfg)
    except ConfigError as e:
        if source is None:
            raise
        raise ConfigError(f"{e} (loading {source})", e.key) from None
    return cfg


# ----------------------------------------------------------------------------- saving


def _plain(value, for_hash: bool = False):
    if _is_instance(value):
        return {f.name: _plain(getattr(value, f.name), for_hash) for f in dataclasses.fields(value)
                if f.init and not (for_hash and f.metadata.get("hash") is False)}
    if isinstance(value, (list, tuple)):
        return [_plain(x, for_hash) for x in value]
    if isinstance(value, dict):
        return {k: _plain(x, for_hash) for k, x in value.items()}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return value


def to_dict(cfg) -> dict:
    """Plain nested dict of the init fields (tuples -> lists, paths -> str), YAML/JSON-ready."""
    if not _is_instance(cfg):
        raise TypeError(f"to_dict takes a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def dump_yaml(cfg, path: str | os.PathLike) -> pathlib.Path:
    """Write the resolved config as YAML (loadable by `load_config`); returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = f"# {type(cfg).__name__}, config_hash {config_hash(cfg)}\n"
    path.write_text(header + yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True))
    return path


def config_hash(cfg, length: int = 12) -> str:
    """Short sha256 of the config's values (sorted-key JSON), leaving out fields declared with
    option(hash=False). Equal configs give equal hashes across processes and machines."""
    payload = json.dumps(_plain(cfg, for_hash=True), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:length]


# ----------------------------------------------------------------------------- documentation


def _walk(cls: type, prefix: str = "", base=None):
    """(dotted key, field, type, is_section, default) for every field, sections before their
    fields. `base` is the section's default instance, whose values are the effective defaults
    of its fields (a field may default to OptimConfig(lr=3e-5)); MISSING marks a required field."""
    hints = _hints(cls)
    for f in _init_fields(cls):
        key, tp = _join(prefix, f.name), hints[f.name]
        default = getattr(base, f.name) if base is not None else _field_default(f)
        sub = _dataclass_of(tp)
        item = None
        if sub is None and get_origin(tp) in (list, tuple) and get_args(tp):
            item = _dataclass_of(get_args(tp)[0])
        yield key, f, tp, sub is not None or item is not None, default
        if sub is not None:
            yield from _walk(sub, key, default if _is_instance(default) else None)
        elif item is not None:
            yield from _walk(item, key + "[]")


def missing_help(cls: type) -> list[str]:
    """Dotted keys of the fields (nested included) that have no help text."""
    return [key for key, f, *_ in _walk(cls) if not str(f.metadata.get("help", "")).strip()]


def _default_text(default, is_section: bool) -> str:
    if default is MISSING:
        return " (required)"
    if is_section and _is_instance(default):
        return ""  # its fields are listed below it
    text = yaml.safe_dump(_plain(default), default_flow_style=True, width=10**6)
    return " = " + text.strip().removesuffix("...").strip()


def describe(cls: type) -> str:
    """Every field of `cls` (nested sections included) with its type, default and help."""
    doc = (cls.__doc__ or "").strip().splitlines()
    lines = [f"{cls.__name__}" + (f": {doc[0]}" if doc and not doc[0].startswith(cls.__name__ + "(") else "")]
    for key, f, tp, is_section, default in _walk(cls):
        depth = key.count(".")
        pad = "  " * (depth + 1)
        lines.append(f"{pad}{key}: {type_name(tp)}{_default_text(default, is_section)}")
        text = str(f.metadata.get("help", "")).strip() or "(no help)"
        if "must" in f.metadata:
            text += f" Must {f.metadata['must']}."
        lines.extend(textwrap.wrap(text, width=96, initial_indent=pad + "    ",
                                   subsequent_indent=pad + "    "))
    return "\n".join(lines)
