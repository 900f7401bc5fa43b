"""Records as token ids and batches: the training example with its exact loss mask (tokenize_task), the prompt that
generation continues (prompt_ids), raw sentences (tokenize_sentences) and the padded batches of each (collate_*). Both come from one function, so evaluation conditions on exactly the tokens
that training conditioned on: no train/eval mismatch in BOS, spacing or chat formatting.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jinja2 import TemplateError
from transformers import PreTrainedTokenizerBase

from loramerge.data.records import TaskRecord, raise_problems
from loramerge.errors import LoramergeError

IGNORE_INDEX = -100  # the label value PyTorch's cross-entropy (and so every HF model) skips
# A conversation to find the template's end-of-turn tokens with; any text works, these pass strict templates.
_SAMPLE_EXCHANGE = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]


@dataclass(frozen=True)
class TokenizedTask:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX wherever no loss is taken
    lang: str | None


@dataclass(frozen=True)
class _Example:
    ids: list[int]
    labels: list[int]  # IGNORE_INDEX wherever no loss is taken
    prompt_length: int  # the tokens before the final completion (the last assistant turn): what generation is given


class _TemplateMismatch(Exception):
    """The chat template renders a conversation's beginning differently once later turns are added."""


def _encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _piece_ids(tokenizer: PreTrainedTokenizerBase, texts: list[str]) -> list[list[int]]:
    """Token ids of consecutive text pieces, split exactly at the piece boundaries.

    Tokenizing the whole text gives the tokens the model sees at inference (the prompt is tokenized
    alone and generation continues it), so it is used whenever each boundary falls between tokens: the
    tokens of the text up to the boundary are a prefix of the whole's. A tokenizer may merge across a
    boundary ("hel" + "lo" -> "hello"); then no split of the whole's tokens is exact, so each piece is
    tokenized alone and the ids concatenated. Either way the mask is exact and the prompt's tokens are
    those of the prompt alone, as at inference.
    """
    whole_text = "".join(texts)
    whole = _encode(tokenizer, whole_text)
    cuts, end = [0], 0
    for text in texts[:-1]:
        end += len(text)
        prefix = _encode(tokenizer, whole_text[:end])
        if whole[: len(prefix)] != prefix or len(prefix) < cuts[-1]:
            return [_encode(tokenizer, text) for text in texts]
        cuts.append(len(prefix))
    cuts.append(len(whole))
    return [whole[start:stop] for start, stop in zip(cuts, cuts[1:])]


def _chat_pieces(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
    """The rendered conversation cut into pieces, each flagged True if it is an assistant turn.

    An assistant turn starts where rendering the messages before it with the generation prompt ends, and
    ends where rendering the conversation up to and including it ends (after the template's end-of-turn).
    This needs only that the template renders a conversation's beginning the same whatever follows,
    which is checked, and works for any template (few support return_assistant_tokens_mask).
    """

    def render(count: int, generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(messages[:count], tokenize=False, add_generation_prompt=generation_prompt)

    whole = render(len(messages), False)
    pieces: list[tuple[str, bool]] = []
    done = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before, through = render(index, True), render(index + 1, False)
        if not (whole.startswith(before) and whole.startswith(through) and done <= len(before) < len(through)):
            raise _TemplateMismatch
        pieces += [(whole[done : len(before)], False), (whole[len(before) : len(through)], True)]
        done = len(through)
    return [*pieces, (whole[done:], False)]


def _special_ids(tokenizer: PreTrainedTokenizerBase) -> set[int]:
    return set(tokenizer.all_special_ids) | {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}


def _chat_example(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], specials: set[int]) -> _Example:
    pieces = _chat_pieces(tokenizer, messages)
    ids: list[int] = []
    labels: list[int] = []
    prompt_length = 0
    for (_, is_assistant), piece in zip(pieces, _piece_ids(tokenizer, [text for text, _ in pieces])):
        # A turn ends with the end-of-turn token, which the model must learn (it stops generation), and
        # often with formatting after it (ChatML's "\n"), which the model never generates: label up to
        # the turn's last special token, or the whole turn when the template closes it with plain text.
        last = max((i for i, token in enumerate(piece) if token in specials), default=len(piece) - 1) if is_assistant else -1
        prompt_length = len(ids) if is_assistant else prompt_length
        ids += piece
        labels += piece[: last + 1] + [IGNORE_INDEX] * (len(piece) - last - 1)
    return _Example(ids, labels, prompt_length)


def _leading_special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens the tokenizer puts before a text (BOS for Llama-like tokenizers, none for many)."""
    bare = _encode(tokenizer, "a")
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    return next((full[:start] for start in range(len(full)) if full[start : start + len(bare)] == bare), [])


def _uses_template(records: list[TaskRecord], tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether records are rendered with the chat template; refuses a tokenizer the records cannot use."""
    use_template = bool(tokenizer.chat_template)
    chat_lines = [record.line for record in records if record.messages is not None]
    if chat_lines and not use_template:
        lines = ", ".join(map(str, chat_lines[:5])) + (f" and {len(chat_lines) - 5} more" if len(chat_lines) > 5 else "")
        raise LoramergeError(
            f'the task records on lines {lines} are chat ("messages") records, but the tokenizer has no chat template; use a tokenizer with one, or "prompt"/"completion" records'
        )
    if not use_template and tokenizer.eos_token_id is None:
        raise LoramergeError("the tokenizer has no EOS token, so the model could not learn to stop; set its eos_token")
    return use_template


def _examples(records: list[TaskRecord], tokenizer: PreTrainedTokenizerBase) -> list[_Example]:
    """Every record as ids, labels and prompt length, untruncated; every record's problem is reported at once.

    With a chat template, a prompt/completion record is the conversation user: prompt, assistant:
    completion. Without one, the text is BOS (if the tokenizer adds it) + prompt + completion + EOS, with
    nothing put between prompt and completion.
    """
    use_template = _uses_template(records, tokenizer)
    specials, leading = _special_ids(tokenizer), _leading_special_ids(tokenizer)
    problems: list[str] = []
    examples: list[_Example] = []
    for record in records:
        if not use_template:
            prompt, completion = _piece_ids(tokenizer, [record.prompt, record.completion])
            prompt, completion = leading + prompt, completion + [tokenizer.eos_token_id]
            examples.append(_Example(prompt + completion, [IGNORE_INDEX] * len(prompt) + completion, len(prompt)))
            continue
        messages = record.messages or [
            {"role": "user", "content": record.prompt},
            {"role": "assistant", "content": record.completion},
        ]
        try:
            examples.append(_chat_example(tokenizer, messages, specials))
        except TemplateError as error:
            problems.append(
                f"task record on line {record.line}: the tokenizer's chat template rejects it ({error}); change the conversation to the form the template expects"
            )
        except _TemplateMismatch:
            problems.append(
                f"task record on line {record.line}: the chat template renders earlier turns differently once later ones follow, so assistant turns cannot be located; put each assistant turn in a record of its own, ending the conversation"
            )
    raise_problems(problems)
    return examples


def tokenize_task(records: list[TaskRecord], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[TokenizedTask]:
    """Token ids and labels, loss only on completions (plain text) or assistant turns (chat template).

    The text is built as _examples describes. Sequences keep their first max_length tokens; an example
    whose completion is cut away entirely is dropped.
    """
    check_max_length(max_length)
    kept: list[TokenizedTask] = []
    prompt_lengths: list[int] = []
    for record, example in zip(records, _examples(records, tokenizer)):
        first_label = next((i for i, label in enumerate(example.labels) if label != IGNORE_INDEX), len(example.labels))
        prompt_lengths.append(first_label)
        if first_label < max_length:
            kept.append(TokenizedTask(example.ids[:max_length], example.labels[:max_length], record.lang))
    if records and not kept:
        raise LoramergeError(
            f"max_length={max_length} cuts away the whole completion of every task example (the shortest prompt has {min(prompt_lengths)} tokens); raise max_length"
        )
    return kept


def prompt_ids(records: list[TaskRecord], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    """For each record, the ids a model is given to generate its completion: the tokens before the final
    completion (or last assistant turn) in the training example, so evaluation prompts match training's."""
    return [prompt for prompt, _ in prompt_and_answer_ids(records, tokenizer)]


def prompt_and_answer_ids(records: list[TaskRecord], tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], list[int]]]:
    """For each record, prompt_ids' prompt and the training example's tokens after it: the completion as the
    model was taught to write it, with its end-of-turn or EOS token and any formatting after that."""
    return [(example.ids[: example.prompt_length], example.ids[example.prompt_length :]) for example in _examples(records, tokenizer)]


def end_of_turn_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens that close an assistant turn of the chat template (ChatML's <|im_end|>, Gemma's
    <end_of_turn>): training labels them, so a tuned model emits them to stop. Empty without a template, or
    when the template closes turns with plain text or rejects a plain user/assistant exchange."""
    if not tokenizer.chat_template:
        return []
    specials = _special_ids(tokenizer)
    try:
        example = _chat_example(tokenizer, _SAMPLE_EXCHANGE, specials)
    except (TemplateError, _TemplateMismatch):
        return []
    turn = zip(example.ids[example.prompt_length :], example.labels[example.prompt_length :])
    return sorted({token for token, label in turn if label != IGNORE_INDEX and token in specials})


def check_max_length(max_length: int) -> None:
    if max_length < 1:
        raise LoramergeError(f"max_length is {max_length}; it must be a positive number of tokens")


def tokenize_sentences(texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int) -> list[list[int]]:
    """Each sentence as the tokenizer encodes raw text (with its own special tokens), first max_length tokens."""
    check_max_length(max_length)
    if not texts:
        return []
    rows = tokenizer(texts, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
    empty = [i for i, row in enumerate(rows) if not row]
    if empty:  # a row of no tokens would make its mean-pooled representation 0/0
        raise LoramergeError(
            f"sentence {empty[0] + 1} ({texts[empty[0]][:40]!r}) encodes to no tokens; remove it or use another tokenizer"
        )
    return rows


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def _attention_mask(rows: list[list[int]]) -> torch.Tensor:
    return _pad([[1] * len(row) for row in rows], 0)


def collate_task(examples: list[TokenizedTask], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask and labels, right-padded to the longest example (labels with IGNORE_INDEX)."""
    if not examples:
        raise ValueError("collate_task needs at least one example")
    rows = [example.input_ids for example in examples]
    return {
        "input_ids": _pad(rows, pad_id),
        "attention_mask": _attention_mask(rows),
        "labels": _pad([e.labels for e in examples], IGNORE_INDEX),
    }


def collate_sentences(rows: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask of raw sentences, right-padded to the longest row."""
    if not rows:
        raise ValueError("collate_sentences needs at least one row")
    return {"input_ids": _pad(rows, pad_id), "attention_mask": _attention_mask(rows)}


def collate_pairs(sources: list[list[int]], targets: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """One batch of 2B rows, so a single forward pass encodes both sides of B pairs.

    Rows 0..B-1 are the sources and rows B..2B-1 the targets: pair i is rows i and B + i. Keys input_ids
    and attention_mask, right-padded to the longest of all 2B rows.
    """
    if not sources or len(sources) != len(targets):
        raise ValueError(f"collate_pairs needs as many targets as sources, at least one (got {len(sources)} and {len(targets)})")
    return collate_sentences([*sources, *targets], pad_id)
