"""A checkpoint whose safetensors header length is 128 mod 256 starts with the byte 0x80, as a pickle
does: it must load (the pickle signature is looked at only when the file does not parse)."""

from __future__ import annotations

import pickle

import pytest
import torch

from retainrl.train import checkpoint


def test_a_header_length_of_128_mod_256_is_not_taken_for_a_pickle():
    for pad in range(600):
        state = {"pad": "x" * pad, "w": torch.arange(3.0)}
        data = checkpoint.dumps(state)
        if data[:1] == b"\x80":
            break
    else:
        pytest.fail("no header length 128 mod 256 in 600 tries")
    back = checkpoint.loads(data)
    assert back["pad"] == state["pad"] and torch.equal(back["w"], state["w"])
    with pytest.raises(checkpoint.CheckpointError, match="pickle"):   # a real pickle is still named as one
        checkpoint.loads(pickle.dumps({"a": 1}))
