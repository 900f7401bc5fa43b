"""Task evaluation: one base model loaded once, any number of PEFT adapters loaded beside it under names,
each variant (an adapter, or the base alone) generating greedily for the same records and scored per language.

    evaluator = Evaluator("bundled:smollm2-135m", metric="chrf")
    evaluator.add_adapter("task", Path("out/task"))
    scores = evaluator.evaluate("task", read_task_file(Path("test.jsonl")))  # None evaluates the base model
    scores.languages["fr"].score, scores.mean, scores.group_means({"en"})
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from statistics import fmean
from typing import Any

import torch

from loramerge.data.records import TaskRecord
from loramerge.data.tokenization import prompt_and_answer_ids, prompt_ids
from loramerge.dtypes import DTYPES
from loramerge.errors import LoramergeError
from loramerge.evaluate.adapter_check import check_adapter_fits, check_adapter_folder
from loramerge.evaluate.forced import forced_answers
from loramerge.evaluate.generation import check_settings, generate_greedy, stop_ids
from loramerge.evaluate.metrics import UNDETERMINED, LanguageScore, Metric, get_metric, group_means, language_scores
from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec
from loramerge.models.precision import AUTOCAST_DTYPES, resolved_precision


@dataclass(frozen=True)
class Prediction:
    record: TaskRecord
    text: str
    score: float  # the metric's item score, 0-100

    @property
    def lang(self) -> str:
        return self.record.lang or UNDETERMINED

    def to_json(self) -> dict[str, Any]:
        record = self.record
        return {
            "line": record.line,  # the record's line in the data file
            "lang": self.lang,
            "prompt": record.prompt,
            "reference": record.completion,
            "prediction": self.text,
            "score": self.score,
        }


@dataclass(frozen=True)
class VariantScores:
    """One variant's results: scores in percent per language, their macro mean, and every prediction."""

    metric: str
    languages: dict[str, LanguageScore]
    predictions: list[Prediction]
    seconds: float  # generation time, for generations/s

    @property
    def mean(self) -> float:
        """Macro average over languages: each language counts once, whatever its number of records."""
        return fmean(language.score for language in self.languages.values())

    def group_means(self, supervised: set[str] | None) -> dict[str, float | None]:
        return group_means({lang: language.score for lang, language in self.languages.items()}, supervised)


def score_predictions(metric: Metric, records: list[TaskRecord], texts: list[str], seconds: float = 0.0) -> VariantScores:
    """Scores of generated texts against the records' completions; records without "lang" count as "und"."""
    predictions = [
        Prediction(record, text, metric.item(text, record.completion)) for record, text in zip(records, texts, strict=True)
    ]
    languages = language_scores(
        metric, [prediction.lang for prediction in predictions], texts, [record.completion for record in records]
    )
    return VariantScores(metric.name, languages, predictions, seconds)


class Evaluator:
    """The base model and its tokenizer, loaded once; adapters are added, removed and switched by name."""

    def __init__(
        self,
        model_spec: str,
        metric: str,
        batch_size: int = 16,
        max_new_tokens: int = 32,
        dtype: str = "float32",
        precision: str = "no",
    ) -> None:
        # Every setting is checked before the model loads (seconds to minutes), so a typo fails at once.
        self.metric = get_metric(metric)
        if dtype not in DTYPES:
            raise LoramergeError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if precision not in ("auto", "no", *AUTOCAST_DTYPES):
            raise LoramergeError(f"--precision {precision!r}: use auto, no or {' or '.join(AUTOCAST_DTYPES)}")
        check_settings(max_new_tokens, batch_size)
        self.batch_size, self.max_new_tokens, self.dtype = batch_size, max_new_tokens, dtype
        # autocast of the matrix products, as training's `precision` (auto resolved on this machine)
        self.precision = resolved_precision(precision)
        self.model_spec = model_spec
        source = parse_model_spec(model_spec)
        self.tokenizer = load_tokenizer(source)
        self.model: Any = load_causal_lm(source, dtype)
        self.model.config.use_cache = True  # load_causal_lm turns it off for training; decoding needs it
        self.model.eval()
        # PEFT names modules after adapters and forbids "." in them; internal names leave user names free.
        self._peft_names: dict[str, str] = {}
        self._added = 0
        self.last_generated = 0  # items of the last evaluate() that needed generation (exact match: the undecided)
        self.generated_items = 0  # the same, summed over every evaluate()

    @property
    def adapters(self) -> list[str]:
        return list(self._peft_names)

    @property
    def stop_tokens(self) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(stop_ids(self.tokenizer))

    def add_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if name in self._peft_names:
            raise LoramergeError(f"adapter name {name!r} is used twice; give each adapter its own name (NAME=PATH)")
        check_adapter_folder(path)
        check_adapter_fits(path, self.model, self.model_spec)
        self._added += 1
        peft_name = f"adapter_{self._added}"
        try:
            if isinstance(self.model, PeftModel):
                self.model.load_adapter(str(path), adapter_name=peft_name)
            else:
                self.model = PeftModel.from_pretrained(self.model, str(path), adapter_name=peft_name)
        except (OSError, ValueError, RuntimeError, KeyError) as error:  # a config or shapes from another model
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise LoramergeError(f"adapter {path}: cannot be loaded onto --model {self.model_spec} ({first_line})") from error
        self.model.eval()
        self._peft_names[name] = peft_name

    def remove_adapter(self, name: str) -> None:
        peft_name = self._peft(name)
        del self._peft_names[name]
        if self._peft_names:
            self.model.delete_adapter(peft_name)
        else:  # PEFT keeps no model without adapters: take the LoRA layers out, giving back the plain base model
            self.model = self.model.unload()

    def evaluate(
        self,
        variant: str | None,
        records: list[TaskRecord],
        on_batch: Callable[[int], None] | None = None,
        forced: bool | None = None,
    ) -> VariantScores:
        """Greedy answers for every record with the adapter `variant` (None: the base model alone), scored.
        forced: None uses the one-pass exact match under autocast only (see _answers), True always, False never
        (bench/eval_speed.py compares them)."""
        with self.active(variant):
            start = time.perf_counter()
            texts = self._answers(records, on_batch, forced)
            seconds = time.perf_counter() - start
        return score_predictions(self.metric, records, texts, seconds)

    @contextmanager
    def active(self, variant: str | None) -> Iterator[Any]:
        """The model with the adapter `variant` on (None: the base model alone), under the evaluator's precision:
        what evaluate() runs in, open to passes of a caller's own (bench/align_merge_study.py reads label logits
        and hidden states)."""
        with self._variant(variant), self._autocast():
            yield self.model

    def _answers(self, records: list[TaskRecord], on_batch: Callable[[int], None] | None, forced: bool | None) -> list[str]:
        """Exact match under autocast: one teacher-forced pass decides most items (evaluate/forced.py), the rest are
        generated; other metrics, and float32, generate every item. In float32 the pass measured 0.74x the speed
        of generation on a 2-core AMD EPYC (in bf16 1.31x; bench/eval_speed.py), so float32 keeps generating."""
        use_pass = self.precision in AUTOCAST_DTYPES if forced is None else forced
        if self.metric.name != "exact" or not use_pass:
            self._count_generated(len(records))
            prompts = prompt_ids(records, self.tokenizer)
            return generate_greedy(self.model, self.tokenizer, prompts, self.max_new_tokens, self.batch_size, on_batch)
        prompts, answers = zip(*prompt_and_answer_ids(records, self.tokenizer), strict=True) if records else ((), ())
        found = forced_answers(
            self.model,
            self.tokenizer,
            list(prompts),
            list(answers),
            [record.completion for record in records],
            set(stop_ids(self.tokenizer)),
            self.batch_size,
            self.max_new_tokens,
            on_batch,
        )
        texts = [answer.text for answer in found]
        undecided = [index for index, answer in enumerate(found) if not answer.decided]
        self._count_generated(len(undecided))
        if undecided:
            generated = generate_greedy(
                self.model, self.tokenizer, [prompts[i] for i in undecided], self.max_new_tokens, self.batch_size
            )
            for index, text in zip(undecided, generated, strict=True):
                texts[index] = text
        return texts

    def _count_generated(self, items: int) -> None:
        self.last_generated = items
        self.generated_items += items

    def _autocast(self) -> AbstractContextManager[Any]:
        if self.precision not in AUTOCAST_DTYPES:
            return nullcontext()
        device = next(self.model.parameters()).device.type
        return torch.autocast(device_type=device, dtype=AUTOCAST_DTYPES[self.precision])

    def _peft(self, name: str) -> str:
        if name not in self._peft_names:
            known = ", ".join(self._peft_names) or "none"
            raise LoramergeError(f"no adapter named {name!r} (loaded: {known})")
        return self._peft_names[name]

    @contextmanager
    def _variant(self, name: str | None) -> Iterator[None]:
        if name is not None:
            self.model.set_adapter(self._peft(name))
            yield
            return
        with self.model.disable_adapter() if self._peft_names else nullcontext():
            yield
