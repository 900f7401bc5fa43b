"""Evaluation of one-token labels: a generation loop against one teacher-forced pass, float32 against bf16.

    .venv/bin/python bench/eval_speed.py --adapter bench/out/transfer/demo-dev/150/seed0/task \
        --data bench/out/transfer/data/dev-84.jsonl [--items 600]

Issue 33: `loramerge eval` with exact match now decides an item from one forward pass over prompt + taught answer
where that pass can decide it (evaluate/forced.py), and generates the rest; `--precision auto` runs the products
in bf16 where the machine measured them faster. This script scores the same items four ways in one process,
taking turns batch by batch so every way sees the same background load: generation (greedy, as before) and
the forced pass, each in float32 and in bf16 autocast. It reports items/s, the ratios, and how many items'
scores differ from generation in float32 (the reference): the forced pass must agree with generation item by
item in the same precision (up to float ties); bf16 may move a few items either way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from loramerge.data.records import read_task_file
from loramerge.evaluate.evaluator import Evaluator

BATCH = 32  # the demo's evaluation batch
WAYS = [("generate", "no"), ("forced", "no"), ("generate", "bf16"), ("forced", "bf16")]


def score_batch(evaluator: Evaluator, way: str, records: list[Any]) -> list[float]:
    return [prediction.score for prediction in evaluator.evaluate("task", records, forced=way == "forced").predictions]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:gemma-3-270m")
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--max-new-tokens", type=int, default=4)
    options = parser.parse_args()
    records = read_task_file(options.data)[: options.items]
    evaluators = {}
    for precision in ("no", "bf16"):
        evaluator = Evaluator(options.model, "exact", BATCH, options.max_new_tokens, precision=precision)
        evaluator.add_adapter("task", options.adapter)
        evaluators[precision] = evaluator
    scores: dict[str, list[float]] = {f"{way} {p}": [] for way, p in WAYS}
    seconds = dict.fromkeys(scores, 0.0)
    generated = 0
    for start in range(0, len(records), BATCH):
        batch = records[start : start + BATCH]
        for way, precision in WAYS:
            began = time.perf_counter()
            scores[f"{way} {precision}"] += score_batch(evaluators[precision], way, batch)
            seconds[f"{way} {precision}"] += time.perf_counter() - began
            if way == "forced" and precision == "no":
                generated += evaluators[precision].last_generated
    reference = scores["generate no"]
    rows = {
        name: {
            "items_per_second": round(len(records) / seconds[name], 2),
            "speedup_over_generate_float32": round(seconds["generate no"] / seconds[name], 2),
            "exact_match": round(sum(values) / len(values), 2),
            "items_scored_differently_from_generate_float32": sum(a != b for a, b in zip(values, reference)),
        }
        for name, values in scores.items()
    }
    result = {
        "items": len(records),
        "forced_float32_items_generated": generated,
        "threads": torch.get_num_threads(),
        "command": " ".join(sys.argv),
        "ways": rows,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
