"""Task metrics as pure functions of strings, in percent (0-100), and the language-group averages of a report.

Each metric has an item score (one prediction against its reference: shown next to each prediction) and a
language score (all predictions of one language: what the report compares). For `exact` and `f1` the
language score is the mean item score; for `chrf` it is sacrebleu's corpus-level chrF, which pools
character n-gram statistics over the language's sentences (the standard way chrF is reported; the mean of
sentence-level chrF would weigh a two-word sentence like a paragraph).
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from statistics import fmean

from sacrebleu.metrics import CHRF

from loramerge.errors import LoramergeError

UNDETERMINED = "und"  # the ISO 639-2 code for "undetermined": records that carry no "lang"


def _canonical_json(text: str) -> str | None:
    """The JSON value of text in one fixed spelling (sorted keys, no spaces), or None if text is not JSON."""
    try:
        value = json.loads(text)
    except ValueError:  # json.JSONDecodeError, and ValueError for out-of-range numbers
        return None
    # Comparing spellings, not Python values: Python says True == 1 and 1 == 1.0, JSON output does not.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def is_json(text: str) -> bool:
    """Whether exact_match compares text as JSON (so another spelling of it also matches)."""
    return _canonical_json(text.strip()) is not None


def exact_match(prediction: str, reference: str) -> float:
    """100 when equal after stripping; a JSON reference is compared as JSON, so key order and spacing do not count."""
    prediction, reference = prediction.strip(), reference.strip()
    if prediction == reference:
        return 100.0
    expected = _canonical_json(reference)
    return 100.0 if expected is not None and _canonical_json(prediction) == expected else 0.0


def _bag_of_words(text: str) -> Counter[str]:
    """Case-folded whitespace tokens with punctuation removed (SQuAD's normalisation, minus its English-only
    article removal, so it means the same in every language)."""
    kept = "".join(" " if unicodedata.category(char).startswith("P") else char for char in text.casefold())
    return Counter(kept.split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD-style F1 of the two bags of words; 100 when both are empty."""
    predicted, expected = _bag_of_words(prediction), _bag_of_words(reference)
    if not predicted or not expected:
        return 100.0 if predicted == expected else 0.0
    overlap = sum((predicted & expected).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(predicted.values()), overlap / sum(expected.values())
    return 100 * 2 * precision * recall / (precision + recall)


def chrf_sentence(prediction: str, reference: str) -> float:
    return CHRF().sentence_score(prediction.strip(), [reference.strip()]).score


def chrf_corpus(predictions: list[str], references: list[str]) -> float:
    return CHRF().corpus_score([p.strip() for p in predictions], [[r.strip() for r in references]]).score


@dataclass(frozen=True)
class Metric:
    name: str
    description: str  # for the report: what a number means
    item: Callable[[str, str], float]
    language: Callable[[list[str], list[str]], float]


def _mean_of(item: Callable[[str, str], float]) -> Callable[[list[str], list[str]], float]:
    return lambda predictions, references: fmean(map(item, predictions, references))


METRICS = {
    "exact": Metric("exact", "exact match (JSON references compared as JSON), % of items", exact_match, _mean_of(exact_match)),
    "chrf": Metric("chrf", "chrF (sacrebleu, corpus-level per language)", chrf_sentence, chrf_corpus),
    "f1": Metric("f1", "token F1 (bag of words, SQuAD-style), mean over items", token_f1, _mean_of(token_f1)),
}


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise LoramergeError(f"--metric {name!r}: unknown metric; use one of {', '.join(METRICS)}")
    return METRICS[name]


@dataclass(frozen=True)
class LanguageScore:
    score: float  # percent
    count: int  # items


def language_scores(
    metric: Metric, languages: list[str], predictions: list[str], references: list[str]
) -> dict[str, LanguageScore]:
    """The score of each language's items (given as parallel lists), languages sorted."""
    by_language: dict[str, tuple[list[str], list[str]]] = {}
    for lang, prediction, reference in zip(languages, predictions, references):
        group = by_language.setdefault(lang, ([], []))
        group[0].append(prediction)
        group[1].append(reference)
    return {lang: LanguageScore(metric.language(*by_language[lang]), len(by_language[lang][0])) for lang in sorted(by_language)}


def split_languages(languages: Iterable[str], supervised: Iterable[str]) -> tuple[list[str], list[str]]:
    """(supervised, transfer): the languages of the data the task adapter was trained on, and all others."""
    wanted = set(supervised)
    present = sorted(set(languages))
    return [lang for lang in present if lang in wanted], [lang for lang in present if lang not in wanted]


def group_means(scores: dict[str, float], supervised: Iterable[str] | None) -> dict[str, float | None]:
    """Macro averages over languages (each language counts once, whatever its size): all languages, and with
    a supervised set given, its languages and the others (transfer). None for a group with no language, and
    for both groups without a supervised set (calling every language "transfer" would claim what is unknown)."""
    means: dict[str, float | None] = {"all": fmean(scores.values()) if scores else None, "supervised": None, "transfer": None}
    if supervised is not None:
        for group, members in zip(("supervised", "transfer"), split_languages(scores, supervised)):
            means[group] = fmean(scores[lang] for lang in members) if members else None
    return means
