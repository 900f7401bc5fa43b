"""A float32 matrix held exactly as int8 codes times one float32 scale per group of 32 columns.

A model converted from a GGUF whose token embedding is Q8_0 (the bundled Gemma-3-270M: 262,144 x 640) holds
float32 values that are, group by group of 32, an fp16 scale d times an integer q in [-127, 127]; d * q needs at
most 11 + 7 significant bits, so float32 holds it exactly, and so does (int8 q, float32 d). The matrix then
takes 1 + 4/32 bytes per value instead of 4 (671 -> 189 MB for Gemma's), and every block of rows read back is
bit-identical to the float32 original: nothing downstream can tell the difference but memory.

`compact_exactly` finds the codes (d = largest |value| / 127 per group, which is the fp16 d itself when the
largest code is 127) and accepts the matrix only if every group reproduces exactly; anything else (a float32
checkpoint, another quantisation) gets None and stays as it is.

Pure tensor math: no model, no module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GROUP = 32  # GGUF Q8_0's block: 32 consecutive values of a row share one scale
LARGEST_CODE = 127
CHUNK_ROWS = 8192  # rows converted at a time: 21 MB of float32 temporaries for a 640-wide matrix


@dataclass(frozen=True)
class Int8Groups:
    codes: torch.Tensor  # int8 [rows, columns]
    scales: torch.Tensor  # float32 [rows, columns // GROUP]

    @property
    def shape(self) -> torch.Size:
        return self.codes.shape

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.scales.nbytes

    # What a reader of the rows sees: float32 values on the codes' device, 4 bytes each (as a tensor says it).
    dtype = torch.float32

    @property
    def device(self) -> torch.device:
        return self.codes.device

    def element_size(self) -> int:
        return 4

    def rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) in float32, bit-identical to the original matrix's."""
        return _expand(self.codes[start:stop], self.scales[start:stop])

    def gather(self, indices: torch.Tensor) -> torch.Tensor:
        """The rows at `indices` (any shape) in float32, shaped [*indices.shape, columns]."""
        flat = indices.reshape(-1)
        return _expand(self.codes[flat], self.scales[flat]).reshape(*indices.shape, self.shape[1])


def _expand(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    rows, columns = codes.shape
    grouped = codes.reshape(rows, columns // GROUP, GROUP).to(torch.float32)
    return grouped.mul_(scales[:, :, None]).reshape(rows, columns)


def _compact_chunk(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    rows, columns = values.shape
    grouped = values.reshape(rows, columns // GROUP, GROUP)
    scales = grouped.abs().amax(dim=2) / LARGEST_CODE
    divisor = torch.where(scales == 0, torch.ones_like(scales), scales)  # an all-zero group: codes 0, scale 0
    codes = torch.round(grouped / divisor[:, :, None])
    if codes.abs().max() > LARGEST_CODE or not torch.equal(codes * scales[:, :, None], grouped):
        return None
    return codes.to(torch.int8).reshape(rows, columns), scales


def compact_exactly(matrix: torch.Tensor) -> Int8Groups | None:
    """The matrix as int8 groups if every group of 32 columns is exactly scale x integer codes, else None.

    Reads the matrix once, CHUNK_ROWS rows at a time, so the temporaries stay small (for Gemma's embedding:
    0.8 s on one core)."""
    if matrix.dtype != torch.float32 or matrix.dim() != 2 or matrix.shape[1] % GROUP != 0 or matrix.numel() == 0:
        return None
    codes = torch.empty(matrix.shape, dtype=torch.int8)
    scales = torch.empty(matrix.shape[0], matrix.shape[1] // GROUP, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, matrix.shape[0], CHUNK_ROWS):
            found = _compact_chunk(matrix[start : start + CHUNK_ROWS].detach().cpu())
            if found is None:
                return None
            codes[start : start + CHUNK_ROWS], scales[start : start + CHUNK_ROWS] = found
    return Int8Groups(codes=codes, scales=scales)
