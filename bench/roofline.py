"""How close training runs to this machine's limit: matmul throughput measured here (float32 and bfloat16, the
CPU's bf16 units read from /proc/cpuinfo), the FLOPs of a training step counted by torch's FlopCounterMode, and
the fraction of the measured float32 throughput that loramerge's task and alignment steps reach.

    .venv/bin/python bench/roofline.py [--model bundled:gemma-3-270m] [--steps 8] [--threads 2]

The steps are loramerge's own: `build_streams` batches of the topic task (`loramerge data topics`, as
bench/transfer_study.py builds it under bench/out/transfer/data) and its in-domain alignment pairs, run through
`ObjectiveModel` with LoRA r=8 on every linear layer, forward + backward + AdamW step. The first step of each kind
is a warm-up; the FLOPs are those of the forward and backward matmuls (FlopCounterMode counts aten mm/bmm/
attention), so the fraction is a lower bound on how busy the matrix units are. Writes bench/out/roofline.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model
from torch.utils.flop_counter import FlopCounterMode

from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec
from loramerge.train.objectives import ALIGN, TASK
from loramerge.train.recipe import TrainRecipe
from loramerge.train.run import lora_config, objective_module
from loramerge.train.streams import build_streams

OUT = Path(__file__).resolve().parent / "out"
DATA = OUT / "transfer" / "data" / "topics"
# Gemma-3-270M's linear layers on a micro-batch of ~16 short records: tokens x hidden @ hidden x intermediate.
SHAPES = {"square 2048": (2048, 2048, 2048), "training-like 640 x 640 x 2048": (640, 640, 2048)}


def cpu_flags() -> list[str]:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    return sorted(flag for flag in flags if flag.startswith("amx") or flag in ("avx512_bf16", "avx512f", "avx2"))


def matmul_gflops(rows: int, inner: int, cols: int, dtype: torch.dtype, seconds: float = 1.0) -> float:
    left, right = torch.randn(rows, inner, dtype=dtype), torch.randn(inner, cols, dtype=dtype)
    for _ in range(3):
        left @ right
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        left @ right
        calls += 1
    return 2 * rows * inner * cols * calls / (time.perf_counter() - start) / 1e9


def recipe(model: str) -> TrainRecipe:
    return TrainRecipe.model_validate(
        {
            "model": model,
            "data": str(DATA / "train.jsonl"),
            "pairs": str(DATA / "align-train.jsonl"),
            "align": {"layer": 9},
            "batch_size": 16,
            "max_length": 96,
            "task_per_align": [1, 1],
        }
    )


def step_costs(model_spec: str, steps: int) -> dict[str, Any]:
    train_recipe = recipe(model_spec)
    source = parse_model_spec(model_spec)
    tokenizer = load_tokenizer(source)
    streams, _, _ = build_streams(train_recipe, "task", tokenizer)
    model = load_causal_lm(source)
    peft_model = get_peft_model(model, lora_config(train_recipe, None))
    objective = objective_module(peft_model, train_recipe.align.layer, train_recipe)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    results: dict[str, Any] = {}
    for kind in (TASK, ALIGN):
        batches = [streams[kind].next_batch() for _ in range(steps + 1)]
        counter = FlopCounterMode(display=False)
        with counter:
            objective(kind, **batches[0]).backward()
        optimizer.zero_grad(set_to_none=True)
        flops_first = counter.get_total_flops()
        tokens_first = int(batches[0]["attention_mask"].sum())
        seconds, tokens = 0.0, 0
        for batch in batches[1:]:
            start = time.perf_counter()
            objective(kind, **batch).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            seconds += time.perf_counter() - start
            tokens += int(batch["attention_mask"].sum())
        flops_per_token = flops_first / tokens_first  # the counted batch's matmul FLOPs per real token
        results[kind] = {
            "steps": steps,
            "seconds_per_step": seconds / steps,
            "tokens_per_step": tokens / steps,
            "flops_per_token": flops_per_token,
            "gflops_achieved": flops_per_token * tokens / seconds / 1e9,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:gemma-3-270m")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    options = parser.parse_args()
    torch.set_num_threads(options.threads)
    torch.manual_seed(0)
    peaks = {
        name: {str(dtype).removeprefix("torch."): matmul_gflops(*shape, dtype) for dtype in (torch.float32, torch.bfloat16)}
        for name, shape in SHAPES.items()
    }
    costs = step_costs(options.model, options.steps)
    fp32_peak = max(peak["float32"] for peak in peaks.values())
    for cost in costs.values():
        cost["fraction_of_fp32_matmul"] = cost["gflops_achieved"] / fp32_peak
    result = {"cpu_flags": cpu_flags(), "threads": options.threads, "matmul_gflops": peaks, "steps": costs}
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "roofline.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"CPU flags: {', '.join(result['cpu_flags'])}; {options.threads} threads")
    print("| matmul | float32 GFLOP/s | bfloat16 GFLOP/s | bf16 / fp32 |\n|---|---:|---:|---:|")
    for name, peak in peaks.items():
        print(f"| {name} | {peak['float32']:.0f} | {peak['bfloat16']:.0f} | {peak['bfloat16'] / peak['float32']:.2f} |")
    print(
        "\n| step | s / step | tokens / step | GFLOP / token | GFLOP/s achieved | of fp32 matmul |\n|---|---:|---:|---:|---:|---:|"
    )
    for kind, cost in costs.items():
        print(
            f"| {kind} | {cost['seconds_per_step']:.2f} | {cost['tokens_per_step']:.0f} | {cost['flops_per_token'] / 1e9:.2f} "
            f"| {cost['gflops_achieved']:.0f} | {cost['fraction_of_fp32_matmul']:.0%} |"
        )


if __name__ == "__main__":
    main()
