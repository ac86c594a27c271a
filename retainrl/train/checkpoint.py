"""Checkpoints that cannot run code and cannot be damaged silently.

Format (`retainrl-ckpt-1`): one safetensors file. The tensors of the state are its tensors; the
rest of the state (ints, floats, strings, lists, tuples, dicts with any plain keys, numpy
arrays, and a short allowlist of plain-data dataclasses such as `Task` and `Rollout`) is a JSON
tree in the file's metadata, with tensors referenced by name. Nothing is unpickled on load, so
a run folder from someone else cannot execute code in the trainer (torch.load with
weights_only=False, the old format, could).

Integrity: the metadata also holds the sha256 of the JSON tree and of every tensor's name,
dtype, shape and bytes, recomputed and compared on load. Any damage (a truncated or empty
file, random bytes, a flipped byte anywhere, a header edited to point elsewhere) is reported as
a CheckpointError naming the file. The checksum detects damage, not a forger: someone who
rewrites a checkpoint on purpose can recompute it, but can still only change numbers, never run
code.

Writing is atomic (temp file, fsync, rename). `save_rotating` keeps the previous checkpoint
beside the latest (`state.safetensors` and `state.prev.safetensors`), and `load_latest` falls
back to the previous one, with a warning, when the latest is damaged or missing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from retainrl.data.task import Task
from retainrl.policy.rollout import Rollout
from retainrl.train.runio import RunError, atomic_write_bytes, keep_aside

FORMAT = "retainrl-ckpt-1"
# Plain-data dataclasses a checkpoint may hold, by name. Only these are ever constructed on load.
DATACLASSES = {"Task": Task, "Rollout": Rollout}


class CheckpointError(RunError, ValueError):
    """A checkpoint file is missing, damaged, of an unsupported format, or lacks a field."""


# ----------------------------------------------------------------------------- encoding


def _encode(obj, tensors: dict[str, torch.Tensor], where: str):
    """`obj` as a JSON-able tree; its tensors moved into `tensors` (name -> CPU tensor)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, (np.integer, np.floating)):
        return obj
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).astype(np.int64 if obj.dtype.kind in "ui" else
                                                                           np.float64))
        return {"__ndarray__": name, "dtype": obj.dtype.str}
    if isinstance(obj, list):
        return [_encode(x, tensors, f"{where}[{i}]") for i, x in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(x, tensors, f"{where}[{i}]") for i, x in enumerate(obj)]}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, f"{where}.<key>"), _encode(v, tensors, f"{where}.{k}")]
                             for k, v in obj.items()]}
    name = type(obj).__name__
    if dataclasses.is_dataclass(obj) and DATACLASSES.get(name) is type(obj):
        return {"__dataclass__": name,
                "fields": {f.name: _encode(getattr(obj, f.name), tensors, f"{where}.{f.name}")
                           for f in dataclasses.fields(obj) if f.init}}
    raise TypeError(f"checkpoint: cannot store a {type(obj).__qualname__} at {where or '<root>'} (plain data, "
                    f"tensors, numpy arrays and {sorted(DATACLASSES)} only)")


def _decode(node, tensors: dict[str, torch.Tensor], path: Path):
    if isinstance(node, list):
        return [_decode(x, tensors, path) for x in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        return tensors[node["__ndarray__"]].numpy().astype(np.dtype(node["dtype"]))
    if "__tuple__" in node:
        return tuple(_decode(x, tensors, path) for x in node["__tuple__"])
    if "__dict__" in node:
        return {_decode(k, tensors, path): _decode(v, tensors, path) for k, v in node["__dict__"]}
    if "__dataclass__" in node:
        cls = DATACLASSES.get(node["__dataclass__"])
        if cls is None:
            raise CheckpointError(f"{path}: holds a {node['__dataclass__']!r} record, which checkpoints may not hold")
        return cls(**{k: _decode(v, tensors, path) for k, v in node["fields"].items()})
    return {k: _decode(v, tensors, path) for k, v in node.items()}


def _digest(tree_text: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(tree_text.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"\n{name}:{t.dtype}:{tuple(t.shape)}\n".encode())
        if t.numel():  # the raw bytes, whatever the dtype (bf16 has no numpy type), without a copy
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def dumps(state: dict) -> bytes:
    """The checkpoint file's bytes for `state` (a dict of plain data and tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    tree = json.dumps(_encode(state, tensors, ""), sort_keys=True, separators=(",", ":"))
    meta = {"format": FORMAT, "tree": tree, "sha256": _digest(tree, tensors)}
    return st_save(tensors, metadata=meta)


def loads(data: bytes, path: Path | str = "<bytes>") -> dict:
    """The state from checkpoint bytes; CheckpointError naming `path` for anything wrong."""
    path = Path(path)
    if not data:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
    try:
        n = int.from_bytes(data[:8], "little")
        if len(data) < 8 or n <= 0 or 8 + n > len(data):
            raise ValueError(f"header length {n} does not fit a {len(data)}-byte file")
        header = json.loads(data[8:8 + n])
        meta = header.get("__metadata__") or {}
        tensors = st_load(data)
    except Exception as e:  # noqa: BLE001 - any parse failure is damage
        # only now look for a pickle's signature: a safetensors file whose header length is 128 mod 256
        # also starts with 0x80 (nothing is unpickled either way; this only names the old format)
        if data[:2] == b"PK" or data[:1] == b"\x80":
            raise CheckpointError(f"checkpoint {path} is a pickle (torch.save) file; retainrl does not unpickle "
                                  f"checkpoints, since loading a pickle can run arbitrary code") from None
        raise CheckpointError(f"checkpoint {path} is damaged or not a checkpoint "
                              f"({type(e).__name__}: {str(e)[:200]})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file (format {meta.get('format')!r})")
    tree = meta.get("tree", "")
    if _digest(tree, tensors) != meta.get("sha256"):
        raise CheckpointError(f"checkpoint {path} is damaged: its checksum does not match its contents")
    try:
        return _decode(json.loads(tree), tensors, path)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - a checksummed tree that does not decode: written by something else
        raise CheckpointError(f"checkpoint {path} does not decode ({type(e).__name__}: {e})") from None


# ----------------------------------------------------------------------------- files


def save(state: dict, path: Path) -> None:
    """Write `state` to `path` atomically (a kill leaves the previous file intact)."""
    atomic_write_bytes(Path(path), dumps(state))


def load(path: Path, required: tuple[str, ...] = ()) -> dict:
    """The verified state in `path`; CheckpointError when it is missing, damaged or lacks a key."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    state = loads(data, path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a state dict")
    missing = [k for k in required if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(map(repr, missing))}: it is not a retainrl "
                              f"training state")
    return state


def previous_path(path: Path) -> Path:
    """state.safetensors -> state.prev.safetensors."""
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_rotating(state: dict, path: Path) -> None:
    """Save `state` as `path`, keeping the checkpoint it replaces as `previous_path(path)`.

    Order: the new file is complete on disk (temp + fsync) before the old latest becomes the
    previous one, so at every moment at least one intact checkpoint exists."""
    path = Path(path)
    data = dumps(state)
    tmp = path.with_name(path.name + ".new")
    try:
        atomic_write_bytes(tmp, data)
    except RunError as e:  # name the checkpoint, not its temp file
        raise RunError(str(e).replace(str(tmp), str(path))) from None
    try:
        if path.exists():
            os.replace(path, previous_path(path))
        os.replace(tmp, path)
    except OSError as e:
        raise RunError(f"cannot write checkpoint {path}: {e.strerror or e}") from None


def load_latest(path: Path, required: tuple[str, ...] = ()) -> tuple[dict, Path] | None:
    """(state, file) of the latest intact checkpoint; None when there is none (a new run).

    Tried in order: `path`; `path.new` (complete on disk when a kill came between the two renames
    of save_rotating); the previous copy. Falling back warns, and moves a damaged latest aside
    (`<name>.damaged`, kept, never deleted) so that the next save does not rotate it over the good
    previous one. CheckpointError, naming every file tried, when none is usable."""
    path = Path(path)
    candidates = [path, path.with_name(path.name + ".new"), previous_path(path)]
    if not any(c.exists() for c in candidates):
        return None
    problems = []
    for c in candidates:
        if not c.exists():
            if c is path:
                problems.append(f"{path} is missing")
            continue
        try:
            state = load(c, required)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        if c is not path:
            if path.exists():
                aside = keep_aside(path)
                problems[0] += f" (kept as {aside})"
            which = "the previous checkpoint" if c == candidates[2] else "the complete new checkpoint"
            warnings.warn(f"{'; '.join(problems)}; resuming from {which} {c} (step {state.get('global_step')})",
                          stacklevel=2)
        return state, c
    raise CheckpointError("; ".join(problems) + ". No usable checkpoint: move the run folder's ckpt/ aside to start "
                          "over")
