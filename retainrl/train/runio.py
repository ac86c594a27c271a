"""Run-directory I/O: metrics.jsonl, atomic writes, TensorBoard, Weights & Biases.

A run directory holds config.yaml, metrics.jsonl (one JSON object per line), summary.json,
ckpt/state.safetensors (the latest resumable state, retainrl.train.checkpoint), its previous
copy ckpt/state.prev.safetensors, ckpt/phase<l>.safetensors (the adapter at each phase end)
and tb/ (TensorBoard events).

Resume contract: the checkpoint carries the metrics lines written before it was taken. On
resume metrics.jsonl is rewritten to exactly those lines (the lines after the checkpoint are
re-generated deterministically), so a kill at any moment loses and duplicates no line, and a
metrics file that was truncated, torn or edited is restored from the checkpoint; a file whose
lines differ from the checkpoint's is first kept as metrics.jsonl.damaged (nothing is lost).

Operating-system errors (disk full, permission denied, read-only folder) while writing become
a RunError naming the file and the cause; the write is atomic, so the run stays resumable.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import warnings
from pathlib import Path

import torch


def _clean(v):
    """JSON-safe value: NaN/inf become null, tensors become numbers."""
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    return v


class RunError(Exception):
    """A run cannot go on for a reason outside the code: a file it must write or read (named in
    the message). The CLI prints the message in one line and exits with code 2."""


def _os_error(action: str, path: Path, e: OSError) -> RunError:
    return RunError(f"cannot {action} {path}: {e.strerror or e} (the run can be resumed by rerunning "
                    f"the same command once this is fixed)")


class MetricsLog:
    """Append-only JSONL; each write is flushed and fsynced. `self.lines` holds what was written
    (the checkpoint stores it, so the file can be restored on resume).

    lines: the lines the file must start with (from the checkpoint; None: a new run's empty log).
    """

    def __init__(self, path: Path, lines: list[str] | None = None):
        self.path = Path(path)
        self.lines: list[str] = list(lines or [])
        want = "".join(self.lines)
        try:
            have = self.path.read_bytes() if self.path.exists() else b""
        except OSError as e:
            raise _os_error("read", self.path, e) from None
        if not have.startswith(want.encode()):
            # Lines the checkpoint knows are missing or changed: keep the file aside, restore them.
            backup = keep_aside(self.path, copy=True) if have else None
            warnings.warn(f"{self.path} does not hold the {len(self.lines)} lines recorded in the checkpoint "
                          f"(truncated or edited); restored them from the checkpoint"
                          + (f", the old file kept as {backup}" if have else ""), stacklevel=2)
        if have != want.encode():
            atomic_write_text(self.path, want)
        try:
            self._fh = open(self.path, "a", encoding="utf-8")
        except OSError as e:
            raise _os_error("open", self.path, e) from None

    @property
    def count(self) -> int:
        return len(self.lines)

    def write(self, record: dict) -> None:
        line = json.dumps(_clean(record), sort_keys=True) + "\n"
        try:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as e:
            raise _os_error("write", self.path, e) from None
        self.lines.append(line)

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:  # the error was already reported by write()
            pass


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: malformed JSON line ({e})") from None
    return out


def keep_aside(path: Path, copy: bool = False) -> Path:
    """Move (or copy) `path` to the first free `<name>.damaged`, `<name>.damaged.1`, ...: damaged
    files are kept, never overwritten or deleted. Returns the new name."""
    path = Path(path)
    aside, i = path.with_name(path.name + ".damaged"), 0
    while aside.exists():
        i += 1
        aside = path.with_name(f"{path.name}.damaged.{i}")
    try:
        if copy:
            atomic_write_bytes(aside, path.read_bytes())
        else:
            os.replace(path, aside)
    except OSError as e:
        raise _os_error("keep a copy of", path, e) from None
    return aside


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's own 0600 would hide run files from others


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to a temp file beside `path`, fsync, rename over `path`: a kill or a full disk
    during the write leaves the previous file intact. OSError -> RunError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise _os_error("write", path, e) from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


class TensorBoard:
    """Scalars to TensorBoard when the package is installed; silently off otherwise."""

    def __init__(self, logdir: Path, enabled: bool):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(logdir))
            except Exception:
                self.writer = None

    def scalars(self, step: int, values: dict) -> None:
        if self.writer is None:
            return
        for k, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                self.writer.add_scalar(k, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class WandB:
    """Scalars to Weights & Biases when asked for (`wandb: true`) and the package is installed.

    The W&B run id is kept in RUN_DIR/wandb_id, so a resumed run continues the same W&B run
    (resume="allow"). Asked for but not installed: one warning, and the run goes on with
    JSONL and TensorBoard (logging must never stop training); the same for a failing init.
    """

    def __init__(self, run_dir: Path, enabled: bool, project: str, name: str, config: dict):
        self.run = None
        if not enabled:
            return
        try:
            import wandb
        except ImportError:
            warnings.warn("wandb: true, but the wandb package is not installed (pip install wandb); "
                          "logging to metrics.jsonl and TensorBoard only")
            return
        id_file = Path(run_dir) / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.exists() else wandb.util.generate_id()
        atomic_write_text(id_file, run_id)
        try:
            self.run = wandb.init(project=project, name=name, id=run_id, resume="allow", config=config,
                                  dir=str(run_dir))
        except Exception as e:  # offline, bad key, ...: keep training
            warnings.warn(f"wandb.init failed ({type(e).__name__}: {e}); logging to metrics.jsonl and TensorBoard only")

    def scalars(self, step: int, values: dict) -> None:
        if self.run is None:
            return
        clean = {k: v for k, v in values.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
        if clean:
            self.run.log(clean, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()


class Fanout:
    """Several scalar sinks (TensorBoard, W&B) behind one `scalars` / `close`."""

    def __init__(self, *sinks):
        self.sinks = sinks

    def scalars(self, step: int, values: dict) -> None:
        for sink in self.sinks:
            sink.scalars(step, values)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
