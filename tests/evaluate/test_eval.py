"""`loramerge eval`: prompts as training builds them, batched greedy generation, adapters as variants, the
report, and the command, on tiny random Llamas built from configs (plus one run on bundled SmolLM2)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.data.records import TaskRecord
from loramerge.data.tokenization import IGNORE_INDEX, prompt_ids, tokenize_task
from loramerge.evaluate.evaluator import Evaluator, score_predictions
from loramerge.evaluate.generation import generate_greedy, left_pad, length_batches, stop_ids, until_stop
from loramerge.evaluate.metrics import METRICS, LanguageScore
from loramerge.models.loading import load_tokenizer, parse_model_spec
from loramerge.testing.tiny import load_model
from tests.helpers import save_adapter
from tests.tiny_tokenizer import CHATML, CONVERSATION, make_tokenizer

ModelDir = Callable[[str], Path]
PROMPTS = ["The file", "Save the document before closing. Le", "a", "The network connection was lost. Voulez-vous", "Your"]


def record(prompt: str, completion: str, lang: str | None = None, line: int = 1) -> TaskRecord:
    return TaskRecord(prompt, completion, None, lang, line)


@pytest.fixture(scope="module")
def llama(tiny_model_dir: ModelDir) -> Path:
    return tiny_model_dir("llama")


@pytest.fixture(scope="module")
def adapters(llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-adapters")
    return {"zero": save_adapter(llama, root / "zero", 0.0), "large": save_adapter(llama, root / "large", 0.5)}


@pytest.fixture(scope="module")
def test_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rows = [
        {"prompt": PROMPTS[0], "completion": " could not be opened.", "lang": "en"},
        {"prompt": PROMPTS[1], "completion": " fichier", "lang": "fr"},
        {"prompt": PROMPTS[2], "completion": " b", "lang": "en"},
        {"prompt": PROMPTS[3], "completion": " supprimer", "lang": "fr"},
        {"prompt": PROMPTS[4], "completion": " password"},
    ]
    path = tmp_path_factory.mktemp("eval-data") / "test.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ---- prompts: exactly the tokens training conditions the completion on


def test_plain_prompts_are_the_training_examples_before_their_first_label(llama: Path) -> None:
    tokenizer = load_tokenizer(parse_model_spec(str(llama)))
    records = [record(prompt, " the end") for prompt in PROMPTS]
    for prompt, example in zip(prompt_ids(records, tokenizer), tokenize_task(records, tokenizer, 256)):
        first_label = example.labels.index(next(label for label in example.labels if label != IGNORE_INDEX))
        assert prompt == example.input_ids[:first_label]
        assert prompt[0] == tokenizer.bos_token_id  # the leading BOS, as training puts it


def test_chat_prompts_end_with_the_generation_prompt_of_the_last_assistant_turn() -> None:
    tokenizer = make_tokenizer(chat_template=CHATML)
    chat = TaskRecord("say hello", "hello world", CONVERSATION, "en", 1)
    (prompt,) = prompt_ids([chat], tokenizer)
    (example,) = tokenize_task([chat], tokenizer, 256)
    rendered = tokenizer.apply_chat_template(CONVERSATION[:4], tokenize=False, add_generation_prompt=True)
    assert prompt == tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert example.input_ids[: len(prompt)] == prompt and example.labels[len(prompt)] != IGNORE_INDEX


def test_generation_stops_at_eos_and_at_the_chat_templates_end_of_turn() -> None:
    chatml = make_tokenizer(chat_template=CHATML)
    assert stop_ids(chatml) == sorted(chatml.convert_tokens_to_ids(["</s>", "<|im_end|>"]))
    plain = make_tokenizer()
    assert stop_ids(plain) == [plain.eos_token_id]


# ---- batched greedy generation


def test_padding_and_batching_helpers() -> None:
    input_ids, attention_mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert length_batches([2, 5, 3, 5], batch_size=2) == [[1, 3], [2, 0]]  # longest first, stable
    assert until_stop([4, 9, 2, 0, 0], {2}) == [4, 9] and until_stop([4, 9], {2}) == [4, 9]


def test_left_padded_batches_generate_what_prompts_generate_one_at_a_time(llama: Path) -> None:
    tokenizer = load_tokenizer(parse_model_spec(str(llama)))
    model = load_model(llama).eval()
    prompts = prompt_ids([record(prompt, "x") for prompt in PROMPTS], tokenizer)
    assert len({len(prompt) for prompt in prompts}) >= 4  # lengths differ, so batches are padded
    calls: list[int] = []
    batched = generate_greedy(model, tokenizer, prompts, max_new_tokens=12, batch_size=3, on_batch=calls.append)
    alone = [generate_greedy(model, tokenizer, [prompt], max_new_tokens=12, batch_size=1)[0] for prompt in prompts]
    assert batched == alone and calls == [3, 2]
    assert len(set(batched)) == len(PROMPTS) and all(batched)  # distinct, non-empty: a real comparison


# ---- variants: the base model and adapters in one PeftModel


def test_a_zero_adapter_keeps_the_base_predictions_and_a_large_one_changes_them(
    llama: Path, adapters: dict[str, Path], test_file: Path
) -> None:
    from loramerge.data.records import read_task_file

    records = read_task_file(test_file)
    evaluator = Evaluator(str(llama), "exact", batch_size=2, max_new_tokens=8)
    base = [p.text for p in evaluator.evaluate(None, records).predictions]
    evaluator.add_adapter("zero", adapters["zero"])
    evaluator.add_adapter("large.v2", adapters["large"])  # a "." is fine: PEFT sees internal names
    assert evaluator.adapters == ["zero", "large.v2"]
    zero = [p.text for p in evaluator.evaluate("zero", records).predictions]
    large = [p.text for p in evaluator.evaluate("large.v2", records).predictions]
    assert zero == base
    assert sum(a != b for a, b in zip(large, base)) >= 3
    assert [p.text for p in evaluator.evaluate(None, records).predictions] == base  # adapters disabled again
    evaluator.remove_adapter("zero")
    assert [p.text for p in evaluator.evaluate("large.v2", records).predictions] == large
    evaluator.remove_adapter("large.v2")  # the last one: back to the plain model
    assert evaluator.adapters == [] and [p.text for p in evaluator.evaluate(None, records).predictions] == base


def test_per_language_and_group_scores_by_hand() -> None:
    rows = [("en", "yes", "yes"), ("en", "no", "yes"), ("fr", "oui", "oui"), (None, "x", "y")]
    rows += [("de", "ja", "ja")] * 3 + [("de", "nein", "ja")]
    records = [record("q", reference, lang, line) for line, (lang, _, reference) in enumerate(rows, 1)]
    scores = score_predictions(METRICS["exact"], records, [prediction for _, prediction, _ in rows], seconds=2.0)
    assert scores.languages == {
        "de": LanguageScore(75.0, 4),
        "en": LanguageScore(50.0, 2),
        "fr": LanguageScore(100.0, 1),
        "und": LanguageScore(0.0, 1),
    }
    # Macro: (75 + 50 + 100 + 0) / 4 = 56.25, not the 5 right of 8 records (62.5).
    assert scores.mean == 56.25
    assert scores.group_means({"en", "de"}) == {"all": 56.25, "supervised": 62.5, "transfer": 50.0}
    assert [p.score for p in scores.predictions[:2]] == [100.0, 0.0]
    assert scores.predictions[3].to_json() == {
        "line": 4,
        "lang": "und",
        "prompt": "q",
        "reference": "y",
        "prediction": "x",
        "score": 0.0,
    }


# ---- the command


def run(*args: str, **options: Any) -> Any:
    """`loramerge eval ARGS --key value ...`: a keyword per flag (max_new_tokens -> --max-new-tokens), a list repeats it."""
    flags = [
        item
        for key, value in options.items()
        for one in (value if isinstance(value, list) else [value])
        for item in (f"--{key.replace('_', '-')}", str(one))
    ]
    return CliRunner().invoke(app, ["eval", *args, *flags])


def test_eval_command_compares_base_and_two_adapters(
    llama: Path, adapters: dict[str, Path], test_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "eval"
    result = run(
        model=llama,
        data=test_file,
        out=out,
        metric="f1",
        supervised="en",
        adapter=[f"task={adapters['large']}", adapters["zero"]],
        max_new_tokens=6,
        batch_size=2,
    )
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == ["predictions", "report.md", "results.json", "scores.png"]
    results = json.loads((out / "results.json").read_text())
    assert list(results["variants"]) == ["base", "task", "zero"]
    assert results["languages"] == ["en", "fr", "und"]
    assert results["groups"] == {"supervised": ["en"], "transfer": ["fr", "und"]}
    assert results["data"]["records"] == 5 and len(results["data"]["sha256"]) == 64
    assert results["settings"]["max_new_tokens"] == 6 and results["settings"]["stop_tokens"] == ["</s>"]
    for variant in results["variants"].values():
        languages = variant["languages"]
        assert {lang: languages[lang]["count"] for lang in languages} == {"en": 2, "fr": 2, "und": 1}
    for name, variant in results["variants"].items():  # each reported score is the mean of its predictions' scores
        rows = [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        for lang, entry in variant["languages"].items():
            per_record = [row["score"] for row in rows if row["lang"] == lang]
            assert entry["score"] == pytest.approx(sum(per_record) / len(per_record)), (name, lang)
    # An adapter whose B factors are zero changes nothing: the same generations and scores as the base model.
    base_rows, zero_rows = ((out / "predictions" / f"{v}.jsonl").read_text() for v in ("base", "zero"))
    assert base_rows == zero_rows and results["variants"]["zero"]["languages"] == results["variants"]["base"]["languages"]
    for variant in results["variants"].values():
        means = variant["means"]
        assert means["supervised"] == languages["en"]["score"]
        assert means["transfer"] == pytest.approx((languages["fr"]["score"] + languages["und"]["score"]) / 2)
    report = (out / "report.md").read_text()
    assert "| language | group | n | base | task | zero |" in report and "| transfer mean | mean |" in report
    assert (out / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    predictions = {
        name: [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()]
        for name in ("base", "task", "zero")
    }
    assert [p["line"] for p in predictions["base"]] == [1, 2, 3, 4, 5]
    assert set(predictions["task"][0]) == {"line", "lang", "prompt", "reference", "prediction", "score"}
    assert [p["prediction"] for p in predictions["zero"]] == [p["prediction"] for p in predictions["base"]]
    assert "all languages" in result.stderr  # the summary table


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--metric", "bleu"], "--metric 'bleu': unknown metric"),
        (["--adapter", "base=ADAPTER"], "the name 'base' is the base model's name"),
        (["--adapter", "MISSING"], "not found; pass a PEFT adapter folder"),
        (["--adapter", "a=ADAPTER", "--adapter", "a=ADAPTER"], "the name 'a' is given twice"),
        (["--no-base"], "leaves nothing to evaluate"),
        (["--data", "BAD"], 'bad.jsonl:2: "completion" is missing'),
        (["--dtype", "float64"], "--dtype 'float64'"),
        (["--max-new-tokens", "0"], "--max-new-tokens 0: must be at least 1"),
    ],
)
def test_eval_errors_are_one_line_with_exit_code_2_and_write_nothing(
    llama: Path, adapters: dict[str, Path], test_file: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n', encoding="utf-8")
    names = {"ADAPTER": str(adapters["zero"]), "MISSING": str(tmp_path / "missing"), "BAD": str(bad)}
    flags = [names.get(flag, flag) for flag in flags]
    result = run(*flags, model=llama, out=tmp_path / "out", **({} if "--data" in flags else {"data": test_file}))
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert message in lines[0]
    assert not (tmp_path / "out").exists()


def test_eval_refuses_a_non_empty_out_folder(llama: Path, test_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = run(model=llama, data=test_file, out=out)
    assert result.exit_code == 2 and "--overwrite" in result.stderr
    assert [path.name for path in out.iterdir()] == ["keep.txt"]


# ---- a real pretrained model


@pytest.mark.xdist_group("smollm2")
def test_eval_on_bundled_smollm2(smollm2_cache: Path, tmp_path: Path) -> None:
    from loramerge.testing.tiny import EXAMPLE_PAIRS

    rows = [{"prompt": f"Translate to French: {en}", "completion": fr, "lang": "fr"} for en, fr in EXAMPLE_PAIRS[:4]]
    rows += [{"prompt": f"Translate to English: {fr}", "completion": en, "lang": "en"} for en, fr in EXAMPLE_PAIRS[4:]]
    data = tmp_path / "test.jsonl"
    data.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    out = tmp_path / "eval"
    result = run(model="bundled:smollm2-135m", data=data, out=out, metric="chrf", supervised="en", max_new_tokens=8, batch_size=8)
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["stop_tokens"] == ["<|im_end|>"]  # ChatML: the chat template's end of turn
    base = results["variants"]["base"]
    assert {lang: score["count"] for lang, score in base["languages"].items()} == {"en": 4, "fr": 4}
    predictions = [json.loads(line) for line in (out / "predictions" / "base.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and all(p["prediction"] for p in predictions)
    import sacrebleu

    for lang in ("en", "fr"):  # corpus-level chrF of the written predictions is the reported score
        rows = [p for p in predictions if p["lang"] == lang]
        expected = sacrebleu.corpus_chrf([p["prediction"] for p in rows], [[p["reference"] for p in rows]]).score
        assert base["languages"][lang]["score"] == pytest.approx(expected, abs=0.01), lang
    # A 135M chat model translating these short sentences shares character n-grams with the references.
    assert base["means"]["all"] > 5
