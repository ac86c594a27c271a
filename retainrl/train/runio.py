"""Run-directory I/O: metrics.jsonl, atomic checkpoints, TensorBoard.

A run directory holds config.yaml, metrics.jsonl (one JSON object per line), summary.json,
ckpt/state.pt (the latest resumable state) and tb/ (TensorBoard events).

Resume contract: the checkpoint records how many metrics lines existed when it was taken; on
resume the file is cut back to that many lines and the run continues from the checkpoint, so
a kill at any moment loses and duplicates no line (the lines after the checkpoint are
re-generated deterministically).
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


class MetricsLog:
    """Append-only JSONL with a line counter; each write is flushed and fsynced."""

    def __init__(self, path: Path, keep_lines: int | None = None):
        self.path = Path(path)
        lines = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        # Drop a torn last line (a kill mid-write) and anything after the checkpoint.
        lines = [ln for ln in lines if ln.endswith("\n")]
        if keep_lines is not None:
            lines = lines[:keep_lines]
        atomic_write_text(self.path, "".join(lines))
        self.count = len(lines)
        self._fh = open(self.path, "a")

    def write(self, record: dict) -> None:
        self._fh.write(json.dumps(_clean(record), sort_keys=True) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.count += 1

    def close(self) -> None:
        self._fh.close()


def read_jsonl(path: Path) -> list[dict]:
    out = []
    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: malformed JSON line ({e})") from None
    return out


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, fsync, then rename over the target: a kill
    during the save leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: Path):
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


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
