"""The streaming writer produces files that safetensors itself reads back exactly."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from loramerge.merge.stream_writer import StreamingWriter, TensorSpec


def test_round_trip_through_safetensors(tmp_path):
    tensors = {
        "a": torch.randn(3, 5),
        "b": torch.randn(7).to(torch.bfloat16),
        "c": torch.arange(6).reshape(2, 3),
        "d": torch.zeros(0, 4),
    }
    path = tmp_path / "x.safetensors"
    with StreamingWriter(path, [TensorSpec(k, v.dtype, tuple(v.shape)) for k, v in tensors.items()], {"format": "pt"}) as writer:
        for key, value in tensors.items():
            writer.write(key, value)
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == {"format": "pt"}


def test_writes_must_follow_the_plan(tmp_path):
    spec = [TensorSpec("a", torch.float32, (2, 2))]
    with pytest.raises(ValueError, match="planned"), StreamingWriter(tmp_path / "x.safetensors", spec, {}) as writer:
        writer.write("a", torch.zeros(2, 3))
    with pytest.raises(ValueError, match="never written"), StreamingWriter(tmp_path / "y.safetensors", spec, {}):
        pass
