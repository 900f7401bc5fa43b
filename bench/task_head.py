"""One task step under each of the task loss's routes, on the demo's batch: where the head's time goes.

    .venv/bin/python bench/task_head.py [--model bundled:gemma-3-270m] [--data TASK.jsonl] [--repeats 5]

Same model, batch, LoRA and dropout masks; the variants alternate within each repeat (noise on a shared
machine hits all alike) and the script prints the median forward+backward time of each, its ratio to the
full-logits route, and its loss's difference from it:
  full logits      the model's own forward (the LM head on every position), loss as transformers computes it
  predicting only  transformers' logits_to_keep: the head on positions that predict a supervised token in
                   any row (loramerge before the fused loss)
  fused            loramerge's default: the head on supervised tokens only, vocabulary blocks, online softmax
  fused + split    the default with split_by_length (sub-batches of similar length)
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
from loramerge.data.records import read_task_file
from loramerge.data.tokenization import collate_task, tokenize_task
from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec
from loramerge.train.losses import task_loss
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
    settings = TrainRecipe().align
    variants = {
        "full logits": None,
        "predicting only": ObjectiveModel(model, None, settings, fused_head=False, split_by_length=False),
        "fused": ObjectiveModel(model, None, settings, split_by_length=False),
        "fused + split": ObjectiveModel(model, None, settings),
    }
    supervised = int((batch["labels"][:, 1:] != -100).sum())
    print(f"batch {tuple(batch['input_ids'].shape)}, {supervised} supervised tokens, vocab {model.config.vocab_size}")
    times: dict[str, list[float]] = {name: [] for name in variants}
    losses: dict[str, float] = {}
    for _ in range(options.repeats + 1):  # the first round warms up allocators and caches; dropped
        for name, objective in variants.items():
            torch.manual_seed(0)  # same dropout masks in every variant
            start = time.perf_counter()
            if objective is None:
                output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
                loss = task_loss(output, batch["labels"])
            else:
                loss = objective(TASK, batch["input_ids"], batch["attention_mask"], batch["labels"])
            loss.backward()
            times[name].append(time.perf_counter() - start)
            losses[name] = loss.item()
            model.zero_grad()
    reference = float64_reference(model, batch)
    print(f"float64 reference loss {reference:.6f} (the same states; logits and softmax in float64)")
    full = statistics.median(times["full logits"][1:])
    for name in variants:
        median = statistics.median(times[name][1:])
        print(
            f"{name:16s} {median:7.3f} s  {full / median:5.2f}x faster than full logits  "
            f"loss {losses[name]:.6f} (difference {losses[name] - losses['full logits']:+.1e}, "
            f"from float64 {losses[name] - reference:+.1e})"
        )


@torch.no_grad()
def float64_reference(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """The task loss of the same final states (same dropout masks: same seed, same call order) in float64."""
    base = model.get_base_model()
    torch.manual_seed(0)
    hidden = base.get_decoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    targets = batch["labels"][:, 1:]
    supervised = targets != -100
    logits = hidden.last_hidden_state[:, :-1][supervised].double() @ base.get_output_embeddings().weight.double().T
    return float(torch.nn.functional.cross_entropy(logits, targets[supervised]))


if __name__ == "__main__":
    main()
