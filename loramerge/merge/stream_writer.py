"""Write a .safetensors file tensor by tensor, so a merge never holds its whole output in memory.

safetensors' own `save_file` needs every tensor at once and copies each into a bytes object first.
The format is simple (8-byte little-endian header length, JSON header padded to 8 bytes, raw
little-endian data), so when the shapes are known up front the header is written first and each
tensor's bytes follow as soon as they are computed. Measured on two r=16 Llama-3-8B-shaped adapters
(320 MB): building the whole output, then save_file, made `cat` 3.2x the time of a plain
load_file + save_file of the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import torch

DTYPE_CODES = {
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float64: "F64",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
HEADER_ALIGNMENT = 8  # the data section must start 8-byte aligned


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * torch.empty((), dtype=self.dtype).element_size()


def header_bytes(specs: list[TensorSpec], metadata: dict[str, str]) -> bytes:
    """The length prefix and JSON header; data offsets follow the order of `specs`."""
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for spec in specs:
        header[spec.name] = {
            "dtype": DTYPE_CODES[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, offset + spec.nbytes],
        }
        offset += spec.nbytes
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGNMENT)
    return len(text).to_bytes(8, "little") + text


class StreamingWriter:
    """Write tensors in the order of `specs`; each must match its spec's dtype and shape exactly."""

    def __init__(self, path: Path, specs: list[TensorSpec], metadata: dict[str, str]) -> None:
        names = [spec.name for spec in specs]
        if len(set(names)) != len(names):
            raise ValueError("StreamingWriter: tensor names must be unique")
        self.specs = specs
        self.position = 0
        self.handle: BinaryIO = path.open("wb")
        self.handle.write(header_bytes(specs, metadata))

    def write(self, name: str, tensor: torch.Tensor) -> None:
        if self.position >= len(self.specs):
            raise ValueError(f"StreamingWriter: {name} is one tensor more than planned")
        spec = self.specs[self.position]
        if (name, tensor.dtype, tuple(tensor.shape)) != (spec.name, spec.dtype, spec.shape):
            raise ValueError(f"StreamingWriter: got {name} {tensor.dtype} {tuple(tensor.shape)}, planned {spec}")
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # raw bytes, no copy when contiguous
        self.handle.write(memoryview(data.numpy()))
        self.position += 1

    def __enter__(self) -> StreamingWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.handle.close()
        if kind is None and self.position != len(self.specs):
            raise ValueError(f"StreamingWriter: {len(self.specs) - self.position} planned tensors were never written")
