"""Batched greedy generation: prompts (token ids from loramerge.data.tokenization.prompt_ids) in, stripped text out.

Prompts of similar length share a batch and are left-padded, so every row's next token sits in the last
column and one generate call continues all of them; rows stop at EOS or the chat template's end of turn.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from loramerge.data.tokenization import end_of_turn_ids
from loramerge.errors import LoramergeError


def stop_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS and the chat template's end-of-turn tokens: a tuned chat model ends its answer with the latter,
    which is often not EOS (Gemma's <end_of_turn>)."""
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    return sorted({*eos, *end_of_turn_ids(tokenizer)})


def check_settings(max_new_tokens: int, batch_size: int) -> None:
    for flag, value in (("--max-new-tokens", max_new_tokens), ("--batch-size", batch_size)):
        if value < 1:
            raise LoramergeError(f"{flag} {value}: must be at least 1")


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of similar length, longest first: little padding, and the largest batch comes
    first, so running out of memory happens at once rather than at the end."""
    order = sorted(range(len(lengths)), key=lambda index: -lengths[index])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), padded on the left so every row ends in the last column."""
    width = max(len(row) for row in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(row)) + row for row in rows], dtype=torch.long)
    attention_mask = torch.tensor([[0] * (width - len(row)) + [1] * len(row) for row in rows], dtype=torch.long)
    return input_ids, attention_mask


def until_stop(row: list[int], stops: set[int]) -> list[int]:
    """The generated ids before the first stop token (generate pads finished rows after it)."""
    return next((row[:index] for index, token in enumerate(row) if token in stops), row)


def greedy_config(tokenizer: PreTrainedTokenizerBase, max_new_tokens: int) -> GenerationConfig:
    """A complete config, so a model's own generation_config.json (sampling, temperature) cannot change it."""
    stops = stop_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stops[0] if stops else 0)
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        eos_token_id=stops or None,
        pad_token_id=pad,
        use_cache=True,  # load_causal_lm turns the cache off for training; decoding without it is quadratic
    )


@torch.inference_mode()
def generate_greedy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    max_new_tokens: int = 32,
    batch_size: int = 16,
    on_batch: Callable[[int], None] | None = None,
) -> list[str]:
    """The greedy continuation of each prompt, decoded without special tokens and stripped, in prompt order.
    on_batch(n) is called after each batch of n prompts."""
    check_settings(max_new_tokens, batch_size)
    config = greedy_config(tokenizer, max_new_tokens)
    stops = set(stop_ids(tokenizer))
    device = next(model.parameters()).device
    texts = [""] * len(prompts)
    for batch in length_batches([len(prompt) for prompt in prompts], batch_size):
        input_ids, attention_mask = left_pad([prompts[index] for index in batch], config.pad_token_id)
        output = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), generation_config=config
        )
        for index, row in zip(batch, output[:, input_ids.shape[1] :].tolist()):
            texts[index] = tokenizer.decode(until_stop(row, stops), skip_special_tokens=True).strip()
        if on_batch is not None:
            on_batch(len(batch))
    return texts
