"""Which precision a training run uses when the recipe says `precision: auto` (the default).

bfloat16 autocast (accelerate's mixed precision: the frozen model's matrix products in bf16, the LoRA factors,
optimizer state and losses in float32) pays only where the hardware multiplies bf16 matrices natively: CUDA
devices that support bf16, and CPUs with AMX tiles (Intel Sapphire Rapids on). AVX512-BF16 alone does not: on
this project's Intel Xeon with AVX512-BF16 and no AMX, torch's bf16 matmul runs at 0.55-0.57x its float32 rate
(BENCHMARKS.md, "How close training runs to the machine's limit"), so such CPUs keep float32. An issue's first
reading on an AMX Xeon was ~1,500 against 317 GFLOP/s (4.7x).
"""

from __future__ import annotations

from pathlib import Path

import torch

AMX_BF16 = "amx_bf16"  # /proc/cpuinfo flag of AMX's bf16 tile multiply


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where there is no such file."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def choose_precision(requested: str, cuda_bf16: bool, flags: frozenset[str]) -> str:
    """accelerate's mixed_precision for a recipe's `precision`: 'auto' becomes 'bf16' where bf16 matrix units
    exist (a CUDA device with bf16, or AMX on a CPU run), else 'no'; other values pass through."""
    if requested != "auto":
        return requested
    return "bf16" if cuda_bf16 or AMX_BF16 in flags else "no"


def resolved_precision(requested: str) -> str:
    cuda = torch.cuda.is_available()
    return choose_precision(requested, cuda and torch.cuda.is_bf16_supported(), frozenset() if cuda else cpu_flags())
