"""Interference analysis on the bundled model: the gradient-cosine matrix is a symmetric S x S
cosine table with a unit diagonal, written with its heatmap."""

from __future__ import annotations

import json
import math
from pathlib import Path

from retainrl.analysis import analyze, worst_pair

ROOT = Path(__file__).resolve().parents[1]


def test_gradient_cosine_matrix(tmp_path):
    res = analyze(ROOT / "configs" / "smoke.yaml", ["world.n_heldout=2"], tmp_path, prompts=2, samples=4)
    cos = res["gradient_cosine"]
    assert res["skills"] == ["gen", "repair", "reason"] and len(cos) == 3 and all(len(r) == 3 for r in cos)
    for i in range(3):
        for j in range(3):
            if not math.isnan(cos[i][j]):
                assert -1 - 1e-9 <= cos[i][j] <= 1 + 1e-9
                assert abs(cos[i][j] - cos[j][i]) < 1e-9
        if not math.isnan(cos[i][i]):
            assert abs(cos[i][i] - 1) < 1e-9
    assert (tmp_path / "gradient_cosine.png").exists() and (tmp_path / "interference.json").exists()
    assert json.loads((tmp_path / "interference.json").read_text())["skills"] == res["skills"]


def test_worst_pair_hand_made():
    m = [[0.1, -0.3, 0.0], [0.2, 0.5, -0.1], [0.0, 0.0, 0.0]]
    assert worst_pair(["a", "b", "c"], m) == "training a hurts b most (-0.300)"


def test_gradient_cosines_at_a_checkpoint(tmp_path):
    """--checkpoints: the matrix is recomputed with the checkpoint's adapter loaded, so it differs
    from the base model's; a file that is not a checkpoint is refused with its name."""
    import pytest
    import torch

    from retainrl.policy.model import ModelConfig, load_policy
    from retainrl.train import checkpoint

    torch.manual_seed(0)
    policy = load_policy(ModelConfig(name_or_path="bundled", threads=1))
    adapter = {n: (t.normal_(0, 0.05) if "lora_B" in n else t) for n, t in policy.adapter_state().items()}
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    ckpt = tmp_path / "run" / "ckpt" / "phase1.safetensors"
    checkpoint.save({"adapter": adapter, "global_step": 7}, ckpt)
    res = analyze(ROOT / "configs" / "smoke.yaml", ["world.n_heldout=2"], tmp_path / "a", prompts=8, samples=4,
                  checkpoints=[str(ckpt)])
    (label, cos), = res["gradient_cosine_at"].items()
    assert label == "run/phase1@step7" and len(cos) == 3
    assert any(abs(cos[i][j] - res["gradient_cosine"][i][j]) > 1e-6 for i in range(3) for j in range(3)
               if not (math.isnan(cos[i][j]) or math.isnan(res["gradient_cosine"][i][j])))
    assert (tmp_path / "a" / "gradient_cosine_ckpt0.png").exists()
    bad = tmp_path / "bad.safetensors"
    checkpoint.save({"x": 1}, bad)
    with pytest.raises(ValueError, match="bad.safetensors.*lacks 'adapter'"):
        analyze(ROOT / "configs" / "smoke.yaml", ["world.n_heldout=2"], tmp_path / "b", prompts=2, samples=4,
                checkpoints=[str(bad)])
