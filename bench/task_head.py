"""A task step with the LM head on every position vs only where a supervised token is predicted.

    .venv/bin/python bench/task_head.py [--model bundled:gemma-3-270m] [--data TASK.jsonl] [--repeats 5]

Same model, batch, LoRA and loss; the two variants alternate (noise on a shared machine hits both alike) and
the script prints the median forward+backward time of each, their ratio, and the loss difference.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from peft import get_peft_model

from loramerge.cli.support import quiet_libraries
from loramerge.data.isocodes import build_iso_task
from loramerge.data.records import collate_task, read_task_file
from loramerge.data.tokenization import tokenize_task
from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec
from loramerge.train.objectives import TASK, ObjectiveModel
from loramerge.train.recipe import TrainRecipe
from loramerge.train.run import lora_config


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="bundled:gemma-3-270m")
    parser.add_argument("--data", type=Path, help="task JSONL (default: the demo's iso-codes train split)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args()
    data = options.data
    if data is None:
        data = build_iso_task(["en", "fr"], [], Path(tempfile.mkdtemp()) / "task", split="100").files["train"]
    source = parse_model_spec(options.model)
    tokenizer = load_tokenizer(source)
    model = get_peft_model(load_causal_lm(source), lora_config(TrainRecipe(), None))
    examples = tokenize_task(read_task_file(data)[: options.batch_size], tokenizer, 512)
    batch = collate_task(examples, tokenizer.pad_token_id)
    objective = ObjectiveModel(model, None, TrainRecipe().align)
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    print(f"batch {tuple(batch['input_ids'].shape)}, {supervised} supervised tokens, vocab {model.config.vocab_size}")
    times: dict[bool, list[float]] = {True: [], False: []}
    losses: dict[bool, float] = {}
    for _ in range(options.repeats + 1):  # the first round warms up allocators and caches; dropped
        for head_on_supervised_only in (False, True):
            objective.head_on_supervised_only = head_on_supervised_only
            torch.manual_seed(0)  # same dropout masks in both variants
            start = time.perf_counter()
            loss = objective(TASK, batch["input_ids"], batch["attention_mask"], batch["labels"])
            loss.backward()
            times[head_on_supervised_only].append(time.perf_counter() - start)
            losses[head_on_supervised_only] = loss.item()
            model.zero_grad()
    full, kept = (statistics.median(times[flag][1:]) for flag in (False, True))
    print(f"all positions: {full:.3f} s   supervised positions only: {kept:.3f} s   ratio {full / kept:.2f}x")
    print(f"loss difference: {abs(losses[True] - losses[False]):.2e}")


if __name__ == "__main__":
    main()
