"""Exact match from one teacher-forced pass (evaluate/forced.py) scores every item as greedy generation does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from loramerge.data.records import TaskRecord
from loramerge.data.tokenization import prompt_and_answer_ids, prompt_ids
from loramerge.evaluate.evaluator import Evaluator
from loramerge.evaluate.forced import forced_answers, greedy_path, read_answer
from loramerge.evaluate.generation import generate_greedy, stop_ids
from loramerge.evaluate.metrics import exact_match
from loramerge.models.loading import load_tokenizer, parse_model_spec
from loramerge.testing.tiny import load_model

PROMPTS = [
    "The file",
    "Save the document before closing. Le",
    "a",
    "The network connection was lost. Voulez-vous",
    "Your",
    "Could not open",
    "Le mot de passe",
    "Das Netzwerk",
]


@pytest.fixture(scope="module")
def llama(tiny_model_dir: Callable[[str], Path]) -> Path:
    return tiny_model_dir("llama")


def records(references: list[str]) -> list[TaskRecord]:
    return [TaskRecord(prompt, reference, None, "en", line) for line, (prompt, reference) in enumerate(zip(PROMPTS, references))]


@pytest.mark.parametrize("max_new_tokens", [1, 3])
def test_forced_scores_equal_generations_item_by_item(llama: Path, max_new_tokens: int) -> None:
    tokenizer, model = load_tokenizer(parse_model_spec(str(llama))), load_model(llama).eval()
    own = generate_greedy(model, tokenizer, prompt_ids(records(["x"] * len(PROMPTS)), tokenizer), max_new_tokens, 4)
    # Half the references are the model's own greedy answers (generation scores them 100), half are not.
    references = [answer if index % 2 == 0 else f"{answer} and more" for index, answer in enumerate(own)]
    items = records(references)
    generated = generate_greedy(model, tokenizer, prompt_ids(items, tokenizer), max_new_tokens, 4)
    expected = [exact_match(text, reference) for text, reference in zip(generated, references)]
    assert expected.count(100.0) >= len(PROMPTS) // 2  # a real mix of right and wrong answers

    pairs = prompt_and_answer_ids(items, tokenizer)
    found = forced_answers(
        model, tokenizer, [p for p, _ in pairs], [a for _, a in pairs], references, set(stop_ids(tokenizer)), 4, max_new_tokens
    )
    assert any(answer.decided for answer in found)  # the pass decided items without generating
    for answer, text, reference, score in zip(found, generated, references, expected):
        if answer.decided:
            assert exact_match(answer.text, reference) == score
            if score == 100.0:  # a right answer is the generated text itself
                assert answer.text == text.strip()


def test_the_evaluator_uses_the_pass_under_autocast_only(llama: Path) -> None:
    items = records([" b", " fichier", " x", " password", "", " a", " b", " c"])
    bf16 = Evaluator(str(llama), "exact", batch_size=4, max_new_tokens=3, precision="bf16")
    generated = [prediction.score for prediction in bf16.evaluate(None, items, forced=False).predictions]
    assert bf16.last_generated == len(PROMPTS)
    assert [prediction.score for prediction in bf16.evaluate(None, items).predictions] == generated
    assert bf16.last_generated < len(PROMPTS)
    float32 = Evaluator(str(llama), "exact", batch_size=4, max_new_tokens=3)
    float32.evaluate(None, items)
    assert float32.last_generated == len(PROMPTS)  # float32 generates: the pass measured slower there


def test_read_answer_decides_only_where_no_continuation_can_change_the_score(llama: Path) -> None:
    tokenizer = load_tokenizer(parse_model_spec(str(llama)))
    stop = tokenizer.eos_token_id
    path = tokenizer(" password", add_special_tokens=False)["input_ids"]
    assert greedy_path([*path, stop, 5], {stop}) == path and len(path) >= 2
    words = {t: tokenizer.decode([t], skip_special_tokens=True).strip() for t in range(3, 300)}
    other = next(t for t, word in words.items() if word and not "password".startswith(word))
    space = next((t for t, word in words.items() if not word and t not in tokenizer.all_special_ids), None)

    def answer(predicted: list[int], reference: str = " password", limit: int = 8) -> tuple[str, bool]:
        result = read_answer(path, predicted, {stop}, reference, tokenizer, limit)
        return result.text, result.decided

    assert answer([*path, stop]) == ("password", True)  # the path, then a stop: greedy writes the reference
    assert answer([path[0], stop, stop][: len(path) + 1]) == (tokenizer.decode(path[:1]).strip(), True)  # stopped early
    assert answer([other, *path[1:], stop]) == (tokenizer.decode([other]).strip(), True)  # left it: cannot match
    assert answer([*path, other]) == (tokenizer.decode([*path, other]).strip(), True)  # went on past it: cannot match
    if space is not None:  # a whitespace token after the path: a stop may still follow, so only generation can tell
        assert answer([*path, space]) == ("", False)
    assert answer([*path, stop], limit=1) == (tokenizer.decode(path[:1]).strip(), True)  # cut at max_new_tokens
    assert answer([other, *path[1:], stop], reference='{"a": 1}')[1] is False  # JSON: any spelling may match
