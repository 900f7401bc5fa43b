"""Task and pair files, exact loss masks, truncation and collation, on small BPE tokenizers trained here (no hub)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from loramerge.data.records import SentencePair, TaskRecord, read_pairs_file, read_task_file
from loramerge.data.tokenization import (
    IGNORE_INDEX,
    TokenizedTask,
    collate_pairs,
    collate_task,
    tokenize_sentences,
    tokenize_task,
)
from loramerge.errors import LoramergeError
from tests.tiny_tokenizer import CHATML, CONVERSATION, make_tokenizer


def write_lines(path: Path, lines: list[Any]) -> Path:
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return path


def problems_of(call: Any, *args: Any) -> list[str]:
    with pytest.raises(LoramergeError) as caught:
        call(*args)
    return caught.value.problems


def record(prompt: str, completion: str, lang: str | None = None, line: int = 1) -> TaskRecord:
    return TaskRecord(prompt, completion, None, lang, line)


def chat_record(messages: list[dict[str, str]], line: int = 1) -> TaskRecord:
    return TaskRecord("", messages[-1]["content"], messages, None, line)


def labelled(example: TokenizedTask) -> list[int]:
    return [label for label in example.labels if label != IGNORE_INDEX]


def runs(labels: list[int]) -> list[list[int]]:
    """The maximal stretches of labels that carry loss."""
    found: list[list[int]] = []
    for previous, label in zip([IGNORE_INDEX, *labels], labels):
        if label != IGNORE_INDEX:
            if previous == IGNORE_INDEX:
                found.append([])
            found[-1].append(label)
    return found


# ---- reading task files


def test_task_file_reads_both_forms_extra_keys_and_lang(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "task.jsonl",
        [
            {"id": 7, "prompt": "what is two plus two?", "completion": " four", "lang": "en"},
            "   ",
            {"messages": CONVERSATION, "lang": "de", "source": "x"},
        ],
    )
    first, second = read_task_file(path)
    assert first == TaskRecord("what is two plus two?", " four", None, "en", 1)
    assert (second.line, second.lang, second.messages) == (3, "de", CONVERSATION)
    assert (second.prompt, second.completion) == ("say hello", "hello world")  # the last exchange


def test_every_task_problem_is_reported_at_once_with_file_and_line(tmp_path: Path) -> None:
    bad = [
        '{"prompt": "a", ',  # 1 invalid JSON
        [1, 2],  # 2 not an object
        {"prompt": "a"},  # 3 completion missing
        {"prompt": "  ", "completion": "b"},  # 4 whitespace-only prompt
        {"prompt": "a", "completion": 3},  # 5 wrong type
        {"messages": [{"role": "user", "content": "hi"}]},  # 6 no assistant turn
        {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "yo"}]},  # 7 bad role
        {"messages": "hi"},  # 8 messages not an array
        {"messages": ["hi", {"role": "assistant", "content": "yo"}]},  # 9 message not an object
        {"prompt": "a", "completion": "b", "lang": 5},  # 10 lang not a string
        {"prompt": "a", "completion": "b", "messages": []},  # 11 both forms
        {"text": "a"},  # 12 neither form
        {"messages": [{"role": "assistant", "content": "yo"}]},  # 13 assistant first
        {"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]},  # 14 empty content
        {"prompt": "fine", "completion": "fine"},  # 15 good
    ]
    path = write_lines(tmp_path / "task.jsonl", bad)
    with path.open("ab") as handle:
        handle.write(b'{"prompt": "caf\xe9", "completion": "b"}\n')  # 16 Latin-1, not UTF-8
    problems = problems_of(read_task_file, path)
    assert [int(problem.split(":")[1]) for problem in problems] == list(range(1, 15)) + [16]
    assert all(problem.startswith(f"{path}:") for problem in problems)
    expected = {
        1: "invalid JSON",
        2: "is an array, not a JSON object",
        3: '"completion" is missing; each record needs "prompt" and "completion" strings, or "messages"',
        4: '"prompt" is empty',
        5: '"completion" must be a string, not a number',
        6: 'no "assistant" message',
        7: 'role "bot"; use "system", "user" or "assistant"',
        8: '"messages" must be an array, not a string',
        9: "messages[0] is a string, not an object",
        10: '"lang" must be a string',
        11: 'both "messages" and "prompt"/"completion"',
        12: 'found keys: "text"',
        13: "messages[0] is an assistant message",
        14: 'messages[0]["content"] is empty',
        16: "not valid UTF-8",
    }
    for problem in problems:
        assert expected[int(problem.split(":")[1])] in problem, problem


def test_problem_list_is_capped(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "task.jsonl", [{"prompt": "a"}] * 25)
    problems = problems_of(read_task_file, path)
    assert len(problems) == 21 and problems[-1] == "... and 5 more"


def test_missing_empty_and_folder_inputs_are_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    assert problems_of(read_task_file, missing) == [f"{missing}: does not exist; give the path of a data file"]
    assert "is a folder" in problems_of(read_task_file, tmp_path)[0]
    empty = write_lines(tmp_path / "empty.jsonl", ["", "  "])
    assert "has no records" in problems_of(read_task_file, empty)[0]
    assert "has no records" in problems_of(read_pairs_file, write_lines(tmp_path / "p.tsv", ["source\ttarget"]))[0]


# ---- reading pairs files


def test_pairs_from_jsonl_and_tsv(tmp_path: Path) -> None:
    jsonl = write_lines(
        tmp_path / "pairs.jsonl",
        [
            {"source": "the cat sleeps", "target": "le chat dort", "source_lang": "en", "target_lang": "fr"},
            {"source": "hello", "target": "salut"},
        ],
    )
    assert read_pairs_file(jsonl) == [
        SentencePair("the cat sleeps", "le chat dort", "en", "fr"),
        SentencePair("hello", "salut", None, None),
    ]
    tsv = tmp_path / "pairs.tsv"
    tsv.write_bytes(b"\xef\xbb\xbfsource\ttarget\r\nthe cat sleeps\tle chat dort\r\n\r\nhello \tsalut\r\n")  # BOM, CRLF
    assert read_pairs_file(tsv) == [
        SentencePair("the cat sleeps", "le chat dort", None, None),
        SentencePair("hello", "salut", None, None),
    ]
    headless = write_lines(tmp_path / "headless.tsv", ["a\tb"])
    assert read_pairs_file(headless) == [SentencePair("a", "b", None, None)]


def test_every_pairs_problem_is_reported_with_its_line(tmp_path: Path) -> None:
    tsv = write_lines(tmp_path / "pairs.tsv", ["a\tb", "only one column", "a\tb\tc", "\tb", "fine\tfine"])
    problems = problems_of(read_pairs_file, tsv)
    assert [problem.split(": ", 1)[0] for problem in problems] == [f"{tsv}:2", f"{tsv}:3", f"{tsv}:4"]
    assert "has 1 tab-separated columns; each line needs exactly two" in problems[0] and "has 3" in problems[1]
    assert "the source column is empty" in problems[2]
    jsonl = write_lines(tmp_path / "pairs.jsonl", [{"source": "a"}, {"source": "a", "target": "b", "target_lang": ""}, "nope"])
    problems = problems_of(read_pairs_file, jsonl)
    assert problems == [
        f'{jsonl}:1: "target" is missing; each record needs "source" and "target" strings',
        f'{jsonl}:2: "target_lang" is empty; give a language code such as "de", or leave the key out',
        f"{jsonl}:3: invalid JSON (Expecting value at column 1); each line must be one JSON object",
    ]
    assert "unknown pairs format" in problems_of(read_pairs_file, write_lines(tmp_path / "pairs.csv", ["a,b"]))[0]


# ---- tokenizing task records


def test_plain_prompt_is_masked_exactly_and_completion_ends_with_eos() -> None:
    tokenizer = make_tokenizer()
    (example,) = tokenize_task([record("what is two plus two?", " four", lang="en")], tokenizer, 64)
    prompt = [tokenizer.bos_token_id, *tokenizer("what is two plus two?", add_special_tokens=False)["input_ids"]]
    assert example.input_ids[: len(prompt)] == prompt
    assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert example.labels[len(prompt) :] == example.input_ids[len(prompt) :]
    assert tokenizer.decode(labelled(example)) == " four</s>"
    assert example.lang == "en"


def test_masking_is_exact_when_the_tokenizer_merges_across_the_boundary() -> None:
    tokenizer = make_tokenizer()
    assert tokenizer.tokenize("say hello")[-1] == "Ġhello"  # one token spans prompt and completion
    (example,) = tokenize_task([record("say hel", "lo")], tokenizer, 64)
    prompt = [tokenizer.bos_token_id, *tokenizer("say hel", add_special_tokens=False)["input_ids"]]
    assert example.input_ids[: len(prompt)] == prompt  # the prompt as inference tokenizes it
    assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    assert tokenizer.decode(labelled(example)) == "lo</s>"


def test_plain_text_without_bos() -> None:
    tokenizer = make_tokenizer(bos=False)
    (example,) = tokenize_task([record("say", " hello")], tokenizer, 64)
    assert tokenizer.convert_ids_to_tokens(example.input_ids) == ["say", "Ġhello", "</s>"]
    assert example.labels == [IGNORE_INDEX, *example.input_ids[1:]]


def test_chat_masking_covers_exactly_the_assistant_turns_and_their_end_of_turn() -> None:
    tokenizer = make_tokenizer(chat_template=CHATML)
    (example,) = tokenize_task([chat_record(CONVERSATION)], tokenizer, 256)
    rendered = tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert example.input_ids == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode(run) for run in runs(example.labels)] == ["four<|im_end|>", "hello world<|im_end|>"]
    for position, label in enumerate(example.labels):
        assert label in (IGNORE_INDEX, example.input_ids[position])


def test_prompt_completion_records_use_the_chat_template_when_there_is_one() -> None:
    tokenizer = make_tokenizer(chat_template=CHATML)
    (example,) = tokenize_task([record("say", "hello")], tokenizer, 64)
    assert tokenizer.decode(example.input_ids) == "<|im_start|>user\nsay<|im_end|>\n<|im_start|>assistant\nhello<|im_end|>\n"
    assert [tokenizer.decode(run) for run in runs(example.labels)] == ["hello<|im_end|>"]


def test_chat_records_need_a_chat_template() -> None:
    records = [record("a", "b", line=1), chat_record(CONVERSATION, line=2), chat_record(CONVERSATION, line=4)]
    (problem,) = problems_of(tokenize_task, records, make_tokenizer(), 64)
    assert "lines 2, 4 are chat" in problem and "no chat template" in problem


def test_templates_that_reject_or_rewrite_a_conversation_are_reported_per_record() -> None:
    strict = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system messages') }}{% endif %}" + CHATML
    problems = problems_of(
        tokenize_task, [record("a", "b", line=1), chat_record(CONVERSATION, line=3)], make_tokenizer(chat_template=strict), 64
    )
    assert problems == [problems[0]] and problems[0].startswith("task record on line 3:") and "no system messages" in problems[0]
    counting = "{{ messages | length }}" + CHATML  # the beginning changes as turns are added
    (problem,) = problems_of(tokenize_task, [chat_record(CONVERSATION, line=5)], make_tokenizer(chat_template=counting), 64)
    assert problem.startswith("task record on line 5:") and "put each assistant turn in a record of its own" in problem


def test_truncation_keeps_the_start_and_drops_examples_without_completion() -> None:
    tokenizer = make_tokenizer()
    long_prompt, short_prompt = (
        record("what is two plus two? what is two plus two?", " four", lang="a"),
        record("say", " hello world", lang="b"),
    )
    (kept,) = tokenize_task([long_prompt, short_prompt], tokenizer, 4)
    assert kept.lang == "b"
    assert kept.input_ids == [tokenizer.bos_token_id, *tokenizer("say hello world", add_special_tokens=False)["input_ids"][:3]]
    assert len(kept.labels) == 4 and kept.labels[:2] == [IGNORE_INDEX] * 2 and kept.labels[2:] == kept.input_ids[2:]
    (problem,) = problems_of(tokenize_task, [long_prompt, short_prompt], tokenizer, 2)
    assert "max_length=2" in problem and "shortest prompt has 2 tokens" in problem and "raise max_length" in problem
    assert "positive" in problems_of(tokenize_task, [short_prompt], tokenizer, 0)[0]


def test_lang_is_carried_through_with_a_chat_template() -> None:
    tokenizer = make_tokenizer(chat_template=CHATML)
    records = [TaskRecord("", "", CONVERSATION, "de", 1), record("say", "hello", lang="fr")]
    assert [example.lang for example in tokenize_task(records, tokenizer, 256)] == ["de", "fr"]


# ---- sentences and collation


def test_sentences_are_raw_text_with_the_tokenizers_special_tokens() -> None:
    tokenizer = make_tokenizer(chat_template=CHATML)  # the template must not be applied
    rows = tokenize_sentences(["say hello", "what is two plus two? four"], tokenizer, 4)
    assert rows[0] == tokenizer("say hello")["input_ids"] and rows[0][0] == tokenizer.bos_token_id
    assert rows[1] == tokenizer("what is two plus two? four")["input_ids"][:4]
    assert tokenize_sentences(["say hello"], make_tokenizer(bos=False), 8) == [
        tokenizer("say hello", add_special_tokens=False)["input_ids"]
    ]


def test_collate_task_pads_right_and_masks_padding() -> None:
    examples = [TokenizedTask([5, 6, 7], [IGNORE_INDEX, 6, 7], "en"), TokenizedTask([8], [8], None)]
    batch = collate_task(examples, pad_id=1)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 1, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 6, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert all(tensor.dtype == torch.long for tensor in batch.values())


def test_collate_pairs_stacks_sources_then_targets_in_one_batch() -> None:
    batch = collate_pairs([[5, 6], [7]], [[8, 9, 10], [11]], pad_id=0)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].tolist() == [[5, 6, 0], [7, 0, 0], [8, 9, 10], [11, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]
    with pytest.raises(ValueError):
        collate_pairs([[5]], [], pad_id=0)


def test_a_collated_task_batch_trains_a_tiny_llama(tmp_path: Path) -> None:
    """The ids, mask and labels are what a causal LM takes: the loss is finite and only completion tokens count."""
    from loramerge.testing.tiny import load_model, save_tiny_llama

    tokenizer = make_tokenizer()
    model = load_model(save_tiny_llama(tmp_path / "llama", vocab_size=len(tokenizer)))
    examples = tokenize_task([record("what is two plus two?", " four"), record("say", " hello world")], tokenizer, 32)
    batch = collate_task(examples, tokenizer.pad_token_id)
    output = model(**batch)
    assert torch.isfinite(output.loss)
    # the model's loss is the mean cross-entropy over exactly the completion tokens: next-token targets, with the
    # prompt and the padding left out (computed here by hand from the logits and the examples' own labels)
    targets = batch["labels"][:, 1:]
    counted = targets != IGNORE_INDEX
    completion_tokens = sum(sum(label != IGNORE_INDEX for label in example.labels) for example in examples)
    assert int(counted.sum()) == completion_tokens < int(batch["attention_mask"].sum()) - len(examples)
    by_hand = torch.nn.functional.cross_entropy(output.logits[:, :-1][counted].float(), targets[counted])
    assert torch.allclose(output.loss, by_hand, atol=1e-5)
    # and the mask matters: counting the prompt tokens too gives another loss
    unmasked = batch["input_ids"][:, 1:][batch["attention_mask"][:, 1:].bool()]
    everything = torch.nn.functional.cross_entropy(output.logits[:, :-1][batch["attention_mask"][:, 1:].bool()].float(), unmasked)
    assert not torch.allclose(output.loss, everything, atol=1e-3)
