"""Which precision a run uses when the recipe says `precision: auto` (the default): measured, not guessed.

bfloat16 autocast (accelerate's mixed precision: the frozen model's matrix products in bf16, the LoRA factors,
optimizer state and losses in float32) pays only where the hardware multiplies bf16 matrices faster than float32.
CUDA devices that support bf16 do. On a CPU, flag names do not tell: this project's Intel Xeon with AVX512-BF16
and no AMX multiplies bf16 at 0.55-0.57x its float32 rate (BENCHMARKS.md, "How close training runs to the
machine's limit"), while an AMD EPYC with AVX512-BF16 and no AMX ran 2.3-2.7x (issue 33's probe), and an AMX Xeon
~4.7x. So `auto` on a CPU times a few matrix products of a small model's shapes in both dtypes (~0.3 s, once per
machine: the answer is cached under the model cache) and takes bf16 where it is at least BF16_MIN_SPEEDUP faster.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from pathlib import Path

import torch

from loramerge.models.bundled import cache_root

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}  # a `precision` value -> its autocast dtype


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags (Linux /proc/cpuinfo); empty where there is no such file."""
    line = next((line for line in _cpuinfo_lines() if line.startswith("flags")), "")
    return frozenset(line.partition(":")[2].split())


# A training step is ~60 % matrix products on these CPUs (bench/roofline.py: 39-43 % of the float32 peak, the rest
# elementwise work and casts that bf16 does not speed up): below ~1.3x the products' gain is lost to the casts.
BF16_MIN_SPEEDUP = 1.3
# Gemma-3-270M's MLP products at a 320-token micro-batch, and a square one: (rows, inner, cols)
PROBE_SHAPES = ((320, 640, 2048), (320, 2048, 640), (512, 1024, 1024))


def matmul_seconds(rows: int, inner: int, cols: int, dtype: torch.dtype, repeats: int = 8) -> float:
    """The fastest of `repeats` products (rows x inner) @ (inner x cols) in dtype, after one warm-up."""
    generator = torch.Generator().manual_seed(0)
    left = torch.randn(rows, inner, generator=generator).to(dtype)
    right = torch.randn(inner, cols, generator=generator).to(dtype)
    left @ right
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        left @ right
        best = min(best, time.perf_counter() - start)
    return best


def bf16_matmul_speedup() -> float:
    """float32 time over bf16 time, summed over PROBE_SHAPES, with this process's torch threads."""
    float32 = sum(matmul_seconds(*shape, torch.float32) for shape in PROBE_SHAPES)
    bf16 = sum(matmul_seconds(*shape, torch.bfloat16) for shape in PROBE_SHAPES)
    return float32 / bf16


def machine_key() -> str:
    """What the probe's answer depends on: the CPU, its flags, torch's version and its thread count."""
    cpu = next((line for line in _cpuinfo_lines() if line.startswith("model name")), platform.processor())
    text = "\n".join([cpu, " ".join(sorted(cpu_flags())), torch.__version__, str(torch.get_num_threads())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def measured_bf16_speedup(cache: Path | None = None) -> float:
    """bf16_matmul_speedup of this machine, measured once and then read from <cache>/machine/bf16-KEY.json."""
    path = (cache or cache_root()) / "machine" / f"bf16-{machine_key()}.json"
    try:
        return float(json.loads(path.read_text(encoding="utf-8"))["speedup"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    speedup = bf16_matmul_speedup()
    try:  # a cache that cannot be written only costs the probe again next time
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{os.getpid()}")
        staging.write_text(json.dumps({"speedup": round(speedup, 3), "shapes": PROBE_SHAPES}) + "\n", encoding="utf-8")
        os.replace(staging, path)
    except OSError:
        pass
    return speedup


def choose_precision(requested: str, cuda_bf16: bool, bf16_speedup: float | None) -> str:
    """accelerate's mixed_precision for a recipe's `precision`: 'auto' becomes 'bf16' on a CUDA device with bf16
    and on a CPU whose measured bf16 matmul speedup is at least BF16_MIN_SPEEDUP, else 'no'; other values pass."""
    if requested != "auto":
        return requested
    return "bf16" if cuda_bf16 or (bf16_speedup or 0.0) >= BF16_MIN_SPEEDUP else "no"


def resolved_precision(requested: str) -> str:
    cuda = torch.cuda.is_available()
    measured = None if cuda or requested != "auto" else measured_bf16_speedup()
    return choose_precision(requested, cuda and torch.cuda.is_bf16_supported(), measured)
