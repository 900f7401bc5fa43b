"""The data a run trains on: task records and sentence pairs tokenized into batch streams, the held-out
batches for eval losses, the order of objectives in a cycle and the number of optimizer steps."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from loramerge.data.records import SentencePair, TaskRecord, read_pairs_file, read_task_file
from loramerge.data.tokenization import collate_pairs, collate_task, tokenize_sentences, tokenize_task
from loramerge.errors import LoramergeError
from loramerge.train.batches import BatchStream
from loramerge.train.eval_loss import PairEval, batches
from loramerge.train.objectives import ALIGN, TASK
from loramerge.train.recipe import Mode, TrainRecipe


def language_rows(records: list[TaskRecord] | None, pairs: list[SentencePair] | None) -> list[tuple[str, str, int]]:
    rows = []
    if records:
        rows += [("task", lang or "unknown", n) for lang, n in sorted(Counter(r.lang for r in records).items(), key=str)]
    if pairs:
        directions = Counter(f"{p.source_lang or '?'}-{p.target_lang or '?'}" for p in pairs)
        rows += [("pairs", direction, n) for direction, n in sorted(directions.items())]
    return rows


def languages_of(records: list[TaskRecord] | None, pairs: list[SentencePair] | None) -> list[str]:
    found = {r.lang for r in records or []} | {p.source_lang for p in pairs or []} | {p.target_lang for p in pairs or []}
    return sorted(lang for lang in found if lang)


def pair_batch_size(recipe: TrainRecipe) -> int:
    return recipe.align.batch_size or recipe.batch_size


def tokenized_pairs(
    path: str, tokenizer: PreTrainedTokenizerBase, recipe: TrainRecipe
) -> tuple[list[SentencePair], list[list[int]], list[list[int]]]:
    """The pairs of a file with their source and target token ids (raw sentences, align.max_length)."""
    pairs = read_pairs_file(Path(path))
    limit = recipe.align.max_length
    sources = tokenize_sentences([p.source for p in pairs], tokenizer, limit)
    return pairs, sources, tokenize_sentences([p.target for p in pairs], tokenizer, limit)


def build_streams(
    recipe: TrainRecipe, mode: Mode, tokenizer: PreTrainedTokenizerBase, num_processes: int = 1, process_index: int = 0
) -> tuple[dict[str, BatchStream], list[TaskRecord] | None, list[SentencePair] | None]:
    pad = tokenizer.pad_token_id
    shard = {"num_processes": num_processes, "process_index": process_index}
    streams: dict[str, BatchStream] = {}
    records = pairs = None
    if mode == "task":
        records = read_task_file(Path(recipe.data))
        examples = tokenize_task(records, tokenizer, recipe.max_length)
        streams[TASK] = BatchStream(
            recipe.data, examples, recipe.batch_size, lambda b: collate_task(b, pad), recipe.seed, **shard
        )
    if recipe.pairs is not None and (mode == "align" or recipe.task_per_align[1] > 0):
        pairs, sources, targets = tokenized_pairs(recipe.pairs, tokenizer, recipe)
        tokenized = list(zip(sources, targets))
        size = pair_batch_size(recipe)
        if size < 2:
            raise LoramergeError("alignment needs at least 2 pairs per micro-batch (in-batch negatives); raise align.batch_size")

        def collate(items: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
            return collate_pairs([s for s, _ in items], [t for _, t in items], pad)

        streams[ALIGN] = BatchStream(recipe.pairs, tokenized, size, collate, recipe.seed + 1, **shard)
    return streams, records, pairs


def eval_batches(
    recipe: TrainRecipe, tokenizer: PreTrainedTokenizerBase, with_task: bool, with_pairs: bool
) -> tuple[list[dict[str, torch.Tensor]] | None, PairEval | None]:
    pad = tokenizer.pad_token_id
    task = pairs = None
    if with_task and recipe.eval_data is not None:
        examples = tokenize_task(read_task_file(Path(recipe.eval_data)), tokenizer, recipe.max_length)
        task = [collate_task(chunk, pad) for chunk in batches(examples, recipe.batch_size)]
    if with_pairs and recipe.eval_pairs is not None:
        held_out, sources, targets = tokenized_pairs(recipe.eval_pairs, tokenizer, recipe)
        size = pair_batch_size(recipe)
        pairs = PairEval(
            batches=[collate_pairs(s, t, pad) for s, t in zip(batches(sources, size), batches(targets, size))],
            languages=[pair.target_lang or "target" for pair in held_out],
        )
    return task, pairs


def objective_cycle(recipe: TrainRecipe, streams: dict[str, BatchStream]) -> list[str]:
    if TASK not in streams:
        return [ALIGN]
    if ALIGN not in streams:
        return [TASK]
    task_count, align_count = recipe.task_per_align
    return [TASK] * task_count + [ALIGN] * align_count


def total_steps(recipe: TrainRecipe, streams: dict[str, BatchStream], cycle: list[str]) -> int:
    """Epochs count passes over the main data set: the task data, or the pairs for train-align."""
    if recipe.max_steps is not None:
        return recipe.max_steps
    main = TASK if TASK in streams else ALIGN
    micro_batches = recipe.epochs * streams[main].batches_per_epoch * len(cycle) / cycle.count(main)
    return max(1, math.ceil(micro_batches / recipe.grad_accum))
