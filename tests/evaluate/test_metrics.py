"""Task metrics and language-group averages against values computed by hand."""

from __future__ import annotations

import pytest

from loramerge.errors import LoramergeError
from loramerge.evaluate.metrics import (
    METRICS,
    LanguageScore,
    chrf_corpus,
    chrf_sentence,
    exact_match,
    get_metric,
    group_means,
    language_scores,
    split_languages,
    token_f1,
)


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        (" Paris\n", "Paris", 100.0),  # surrounding whitespace never counts
        ("paris", "Paris", 0.0),  # case does
        ('{"b": [1, 2], "a": "x"}', '{"a":"x","b":[1,2]}', 100.0),  # JSON: key order and spacing do not
        ('{"a": 1}', '{"a": true}', 0.0),  # Python has True == 1; JSON output does not
        ('{"a": 1.0}', '{"a": 1}', 0.0),
        ('{"a": 1', '{"a": 1}', 0.0),  # a prediction that is not JSON
        ("[1, 2]", "[2, 1]", 0.0),  # arrays keep their order
    ],
)
def test_exact_match(prediction: str, reference: str, expected: float) -> None:
    assert exact_match(prediction, reference) == expected


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("the cat sat", "the cat sat down", 100 * 2 * 1 * 0.75 / 1.75),  # P = 3/3, R = 3/4
        ("Paris.", "paris", 100.0),  # case and punctuation are normalised away
        ("a a a", "a b", 40.0),  # bags: overlap min(3, 1) = 1, P = 1/3, R = 1/2, F1 = 2/5
        ("dog", "cat", 0.0),
        ("", "", 100.0),
        ("", "cat", 0.0),
        ("¿Qué?", "qué", 100.0),  # Unicode punctuation too
    ],
)
def test_token_f1(prediction: str, reference: str, expected: float) -> None:
    assert token_f1(prediction, reference) == pytest.approx(expected)


def test_chrf_by_hand() -> None:
    # "ab" vs "ac": character 1-grams P = R = 1/2, 2-grams P = R = 0, no longer n-grams; chrF averages
    # P and R over the orders present, (1/2 + 0) / 2 = 1/4, so F-beta = 25.
    assert chrf_sentence("ab", "ac") == pytest.approx(25.0)
    assert chrf_sentence(" same text ", "same text") == pytest.approx(100.0)
    # Corpus level pools the n-gram counts of both sentences: 1-grams 4/5, 2-grams 2/3, 3-grams 1/1, so
    # (4/5 + 2/3 + 1) / 3 = 82.2; the mean of the sentence scores would be (100 + 25) / 2 = 62.5.
    assert chrf_corpus(["abc", "ab"], ["abc", "ac"]) == pytest.approx(100 * (4 / 5 + 2 / 3 + 1) / 3)
    assert METRICS["chrf"].language(["abc", "ab"], ["abc", "ac"]) == pytest.approx(82.222, abs=1e-3)


def test_language_scores_group_items_by_language() -> None:
    scores = language_scores(METRICS["exact"], ["fr", "en", "en"], ["oui", "yes", "no"], ["oui", "yes", "yes"])
    assert scores == {"en": LanguageScore(50.0, 2), "fr": LanguageScore(100.0, 1)}
    assert list(scores) == ["en", "fr"]


def test_group_means_are_macro_averages_over_languages() -> None:
    scores = {"en": 80.0, "de": 60.0, "fr": 30.0, "ja": 10.0}
    assert group_means(scores, {"en", "de"}) == {"all": 45.0, "supervised": 70.0, "transfer": 20.0}
    assert group_means(scores, None) == {"all": 45.0, "supervised": None, "transfer": None}
    assert group_means({"fr": 30.0}, {"en"}) == {"all": 30.0, "supervised": None, "transfer": 30.0}
    assert split_languages(["fr", "en", "und", "en"], ["en", "xx"]) == (["en"], ["fr", "und"])


def test_unknown_metric_is_a_one_line_error() -> None:
    with pytest.raises(LoramergeError, match="exact, chrf, f1"):
        get_metric("bleu")
