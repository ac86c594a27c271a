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
