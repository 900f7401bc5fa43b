"""Exact int8-group storage of a float32 matrix, against the definition value = fp16 scale x integer code."""

from __future__ import annotations

import torch

from loramerge.models.int8_groups import GROUP, compact_exactly


def q8_0_matrix(rows: int, columns: int, seed: int = 0) -> torch.Tensor:
    """What a Q8_0 GGUF dequantises to: per 32 values of a row, an fp16 scale d times codes in [-127, 127] with
    the largest |code| 127 (ggml: d = amax / 127, q = round(x / d))."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(rows, columns // GROUP, GROUP, generator=generator)
    scales = (values.abs().amax(dim=2) / 127).half().float()
    codes = torch.round(values / scales[:, :, None]).clamp(-127, 127)
    return (codes * scales[:, :, None]).reshape(rows, columns)


def test_a_q8_0_matrix_reads_back_bit_identical_by_blocks_and_by_rows():
    matrix = q8_0_matrix(300, 64)
    matrix[7, :GROUP] = 0.0  # an all-zero group: scale 0
    compact = compact_exactly(matrix)
    assert compact is not None and compact.codes.dtype == torch.int8
    assert torch.equal(compact.rows(0, 300), matrix)
    assert torch.equal(compact.rows(100, 164), matrix[100:164])
    ids = torch.tensor([[299, 0, 7], [7, 7, 150]])
    assert torch.equal(compact.gather(ids), matrix[ids])
    assert compact.nbytes == 300 * 64 + 300 * 2 * 4  # 1 byte a value, 4 bytes a group


def test_anything_that_is_not_exactly_scale_times_codes_is_left_alone():
    assert compact_exactly(torch.randn(64, 64)) is None  # a float32 checkpoint
    perturbed = q8_0_matrix(64, 64)
    perturbed[40, 3] = torch.nextafter(perturbed[40, 3], torch.tensor(1.0))  # one value off by one ulp
    assert compact_exactly(perturbed) is None
    assert compact_exactly(q8_0_matrix(8, 64)[:, :48]) is None  # a width that is not whole groups
    assert compact_exactly(q8_0_matrix(8, 64).double()) is None
