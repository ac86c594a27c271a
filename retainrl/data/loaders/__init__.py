"""Benchmark loaders: a path in, `list[Task]` out.

    from retainrl.data.loaders import load_benchmark
    tasks = load_benchmark("humaneval", "../shared/data/humaneval")

Each loader takes a file or the folder holding it, and returns tasks in file order. The data is
never bundled with the package; see the project README for where to download each set.

| name             | loader                          | skill  | check                       |
|------------------|---------------------------------|--------|-----------------------------|
| humaneval        | humaneval.load_humaneval        | gen    | unit_tests                  |
| mbpp             | mbpp.load_mbpp                  | gen    | unit_tests                  |
| mbpp-sanitized   | mbpp.load_mbpp_sanitized        | gen    | unit_tests                  |
| cruxeval         | cruxeval.load_cruxeval          | reason | output/input_prediction     |
| humanevalfix     | humanevalfix.load_humanevalfix  | repair | unit_tests                  |
| quixbugs         | quixbugs.load_quixbugs          | repair | unit_tests, one job per case|
| jsonl            | jsonl.load_jsonl                | any    | any (users' own data)       |

Errors: a malformed line or record (bad JSON, missing field, wrong type) raises `LoaderError`,
a `ValueError` whose message names the file, the 1-based line number (JSONL) or the record
index (JSON arrays), and the field. A missing file raises `FileNotFoundError`.

This module also holds the small reading helpers the loaders share (`iter_records`,
`require`, `optional`, `resolve_file`).
"""

from __future__ import annotations

import gzip
import importlib
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from retainrl.data.task import Task

__all__ = ["LoaderError", "load_benchmark", "BENCHMARKS", "NATURAL_SKILLS", "iter_records", "require", "optional",
           "resolve_file"]


class LoaderError(ValueError):
    """A malformed record. `where` is "FILE: line N" or "FILE: record index N"; `field` may be None."""

    def __init__(self, where: str, field: str | None, reason: str):
        self.where, self.field, self.reason = where, field, reason
        field_part = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{field_part} {reason}")


# name -> (module, function). Imported lazily so loading one benchmark imports one module.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "humaneval": ("humaneval", "load_humaneval"),
    "mbpp": ("mbpp", "load_mbpp"),
    "mbpp-sanitized": ("mbpp", "load_mbpp_sanitized"),
    "cruxeval": ("cruxeval", "load_cruxeval"),
    "humanevalfix": ("humanevalfix", "load_humanevalfix"),
    "quixbugs": ("quixbugs", "load_quixbugs"),
    "jsonl": ("jsonl", "load_jsonl"),
}
# The skill each benchmark loader gives its tasks (jsonl: the record's own field, so not known in advance).
NATURAL_SKILLS: dict[str, str] = {"humaneval": "gen", "mbpp": "gen", "mbpp-sanitized": "gen", "cruxeval": "reason",
                                  "humanevalfix": "repair", "quixbugs": "repair"}


def get_loader(name: str) -> Callable[..., list[Task]]:
    """The loader function registered under `name`."""
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; expected one of {sorted(BENCHMARKS)}")
    module, func = BENCHMARKS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


def load_benchmark(name: str, path: str | Path, **kw: Any) -> list[Task]:
    """Load benchmark `name` from `path` (file or folder); `kw` goes to that loader."""
    return get_loader(name)(path, **kw)


# ----------------------------------------------------------------------------- reading helpers

def resolve_file(path: str | Path, candidates: tuple[str, ...]) -> Path:
    """`path` itself if it is a file, else the first of `candidates` inside the folder `path`."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for name in candidates:
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: none of {list(candidates)} found in this folder")
    raise FileNotFoundError(f"{path}: no such file or folder")


def _read_text(path: Path) -> str:
    """The file's UTF-8 text (.gz is how HumanEval ships: decompressed first). Bytes that are not
    UTF-8 raise LoaderError naming the 1-based line and column, not a byte offset."""
    try:
        raw = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    except FileNotFoundError:
        raise
    except (OSError, EOFError) as e:  # unreadable, or a damaged .gz
        raise LoaderError(str(path), None, f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise LoaderError(f"{path}: line {line}", None, f"not UTF-8 text: byte 0x{raw[e.start]:02x} at column {col}"
                          ) from None


def iter_records(path: str | Path) -> Iterator[tuple[str, dict]]:
    """Yield (where, record) for each JSON object in a JSONL file or a JSON-array file.

    A `.json` (or `.json.gz`) file is one JSON array (`where` = "FILE: record index N", 0-based);
    anything else is JSONL (`where` = "FILE: line N", 1-based; blank lines are skipped). Bad JSON
    or a record that is not an object raises LoaderError.
    """
    path = Path(path)
    text = _read_text(path)
    is_array = path.name.endswith((".json", ".json.gz"))
    yield from (_iter_array(path, text) if is_array else _iter_lines(path, text))


def _iter_array(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as e:
        raise LoaderError(f"{path}: line {e.lineno}", None, f"bad JSON array: {e.msg}") from None
    if not isinstance(records, list):
        raise LoaderError(str(path), None, f"expected a JSON array, got {type(records).__name__}")
    for i, rec in enumerate(records):
        where = f"{path}: record index {i}"
        if not isinstance(rec, dict):
            raise LoaderError(where, None, f"expected a JSON object, got {type(rec).__name__}")
        yield where, rec


def _iter_lines(path: Path, text: str) -> Iterator[tuple[str, dict]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}: line {lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise LoaderError(where, None, f"bad JSON: {e.msg} (column {e.colno})") from None
        if not isinstance(rec, dict):
            raise LoaderError(where, None, f"expected a JSON object, got {type(rec).__name__}")
        yield where, rec


_MISSING = object()


def _type_name(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _check_type(where: str, field: str, value: Any, types: type | tuple[type, ...]) -> Any:
    # bool is an int subclass; a `true` where a number is expected is still a malformed record.
    bad_bool = isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))
    if bad_bool or not isinstance(value, types):
        raise LoaderError(where, field, f"expected {_type_name(types)}, got {type(value).__name__}")
    return value


def require(rec: dict, field: str, types: type | tuple[type, ...], where: str) -> Any:
    """rec[field], which must exist and be of `types`; LoaderError otherwise."""
    if field not in rec:
        raise LoaderError(where, field, "missing")
    return _check_type(where, field, rec[field], types)


def optional(rec: dict, field: str, types: type | tuple[type, ...], where: str,
             default: Any = None) -> Any:
    """rec[field] if present and not null (checked against `types`), else `default`."""
    value = rec.get(field, _MISSING)
    if value is _MISSING or value is None:
        return default
    return _check_type(where, field, value, types)


def require_str_list(rec: dict, field: str, where: str, *, default: Any = _MISSING) -> list[str]:
    """rec[field] as a list of strings (missing allowed only when `default` is given)."""
    if field not in rec and default is not _MISSING:
        return default
    items = require(rec, field, list, where)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise LoaderError(where, f"{field}[{i}]", f"expected str, got {type(item).__name__}")
    return items
