"""Exact match without a generation loop: one teacher-forced forward pass answers most items.

Greedy decoding writes the reference answer r_1..r_n and then stops exactly when, at every step, the most likely
next token is the reference's (argmax p(. | prompt, r_<j) = r_j for j = 1..n) and the most likely token after r_n
is a stop token. One forward pass over prompt + r gives all n + 1 of those distributions at once (causal
attention: a position sees only what precedes it), where generation needs a prefill, n decoding steps and a loop
around them. The topic task's labels are one token with Gemma-3's tokenizer: two positions of one pass.

Where the check fails, greedy decoding left the reference at step j with token t, so its text starts with
decode(r_<j + [t]). When that start, stripped, is not a prefix of the stripped reference, no continuation can make
the two equal: the item scores 0, decided, with that start as its prediction. When it still could (a whitespace
token, the same characters split into other tokens, an incomplete UTF-8 character, a JSON reference that compares
as JSON whatever its spelling), the item is left undecided and the caller generates it as usual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from loramerge.evaluate.generation import left_pad, length_batches
from loramerge.evaluate.metrics import is_json

INCOMPLETE_CHARACTER = "\ufffd"  # what decode gives for a token that ends inside a UTF-8 character


@dataclass(frozen=True)
class ForcedAnswer:
    text: str  # the greedy answer (decided) or "" (undecided)
    decided: bool  # False: only generation can tell what greedy decoding writes


def greedy_path(answer: list[int], stops: set[int]) -> list[int]:
    """The tokens greedy decoding must write before it stops, for the answer as training taught it: the answer's
    tokens up to (not including) its first stop token."""
    return next((answer[:index] for index, token in enumerate(answer) if token in stops), answer)


def read_answer(
    path: list[int],
    predicted: list[int],
    stops: set[int],
    reference: str,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
) -> ForcedAnswer:
    """What greedy decoding writes, from the argmax tokens after each prefix of the path (len(path) + 1 of them).
    Decoding writes at most max_new_tokens: a path that long is written in full and cut there, stop or not."""
    for step, token in enumerate(predicted[:max_new_tokens]):
        expected_stop = step == len(path)
        if (token in stops) if expected_stop else token == path[step]:
            continue
        if token in stops:  # stopped before the path's end: the answer is the path so far
            return ForcedAnswer(tokenizer.decode(path[:step], skip_special_tokens=True).strip(), True)
        start = tokenizer.decode([*path[:step], token], skip_special_tokens=True)
        could_still_match = reference.strip().startswith(start.strip()) or INCOMPLETE_CHARACTER in start
        if could_still_match or is_json(reference):
            return ForcedAnswer("", False)
        return ForcedAnswer(start.strip(), True)
    return ForcedAnswer(tokenizer.decode(path[:max_new_tokens], skip_special_tokens=True).strip(), True)


@torch.inference_mode()
def forced_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[int]],
    answers: list[list[int]],
    references: list[str],
    stops: set[int],
    batch_size: int,
    max_new_tokens: int,
    on_batch: Callable[[int], None] | None = None,
) -> list[ForcedAnswer]:
    """Each item's greedy answer where one forward pass over prompt + taught answer decides it (see the module)."""
    paths = [greedy_path(answer, stops) for answer in answers]
    rows = [prompt + path for prompt, path in zip(prompts, paths, strict=True)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops, default=0)
    device = next(model.parameters()).device
    results: list[ForcedAnswer | None] = [None] * len(rows)
    for batch in length_batches([len(row) for row in rows], batch_size):
        input_ids, attention_mask = left_pad([rows[index] for index in batch], pad)
        # Left padding puts every row's path at the end; positions count real tokens only, as generate's do.
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        keep = max(len(paths[index]) for index in batch) + 1
        logits = model(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            position_ids=positions.to(device),
            logits_to_keep=keep,  # only the last `keep` positions go through the LM head (262k columns on Gemma-3)
            use_cache=False,
        ).logits
        predicted = logits.argmax(-1).tolist()
        for row, index in enumerate(batch):
            wanted = len(paths[index]) + 1
            answer = read_answer(
                paths[index], predicted[row][keep - wanted :], stops, references[index], tokenizer, max_new_tokens
            )
            results[index] = answer
        if on_batch is not None:
            on_batch(len(batch))
    return [result for result in results if result is not None]
