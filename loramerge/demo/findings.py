"""What the demo's own numbers say: task scores with bootstrap intervals over the test items, the paired gain
of each adapter over task-only, and retrieval at the aligned layer by kind of direction. Computed from the
eval's per-item predictions and the probe's per-direction scores, never assumed."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from loramerge.evaluate.confidence import bootstrap_interval, paired_scores

if TYPE_CHECKING:
    from loramerge.demo.plan import DemoPlan as Plan

REFERENCE = "task"  # every other tuned variant is compared with the task-only adapter


def item_scores(predictions: Path) -> dict[int, tuple[str, float]]:
    """line of the test file -> (language, item score) from one variant's eval predictions."""
    rows = [json.loads(line) for line in predictions.read_text(encoding="utf-8").splitlines()]
    return {row["line"]: (row["lang"], float(row["score"])) for row in rows}


def language_groups(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {
        "supervised": plan.supervised,
        "transfer (aligned)": plan.aligned,
        "transfer (no alignment data)": plan.unaligned,
        "transfer": plan.transfer,
    }


def task_intervals(predictions_folder: Path, variants: list[str], plan: Plan) -> dict[str, Any]:
    """Per language and variant: the mean with its 95 % interval (items resampled); per language group, and per
    language, and tuned variant: the paired difference to task-only with its interval and a verdict."""
    scores = {variant: item_scores(predictions_folder / f"{variant}.jsonl") for variant in variants}
    lines = sorted(scores[variants[0]])
    by_language: dict[str, dict[str, Any]] = {}
    for language in sorted({lang for lang, _ in scores[variants[0]].values()}):
        items = [line for line in lines if scores[variants[0]][line][0] == language]
        by_language[language] = {
            variant: bootstrap_interval(paired_scores([_values(scores[variant], items)], [_zeros(items)], items)).to_json()
            for variant in variants
        }
    gains: dict[str, dict[str, Any]] = {}
    by_language_gains: dict[str, dict[str, Any]] = {}
    if REFERENCE in scores:
        each_language = {lang: (lang,) for lang in by_language}
        for target, named in ((gains, language_groups(plan)), (by_language_gains, each_language)):
            for name, languages in named.items():
                items = [line for line in lines if scores[REFERENCE][line][0] in languages]
                if items:
                    target[name] = paired_gains(scores, variants, items)
    return {"languages": by_language, f"gain over {REFERENCE}": gains, f"gain over {REFERENCE} by language": by_language_gains}


def paired_gains(scores: dict[str, dict[int, tuple[str, float]]], variants: list[str], items: list[int]) -> dict[str, Any]:
    """Each tuned variant minus task-only on the same items: mean, 95 % interval, detectable effect, verdict."""
    entry: dict[str, Any] = {"items": len(items)}
    for variant in variants:
        if variant in (REFERENCE, "base"):
            continue
        difference = paired_scores([_values(scores[variant], items)], [_values(scores[REFERENCE], items)], items)
        interval = bootstrap_interval(difference)
        entry[variant] = {**interval.to_json(), "verdict": verdict(interval.low, interval.high)}
    return entry


def _values(scores: dict[int, tuple[str, float]], items: list[int]) -> dict[int, float]:
    return {line: scores[line][1] for line in items}


def _zeros(items: list[int]) -> dict[int, float]:
    return dict.fromkeys(items, 0.0)


def verdict(low: float, high: float) -> str:
    if low > 0:
        return "improved"
    if high < 0:
        return "worse"
    return "no detectable change"


def retrieval_by_group(probe: dict[str, Any], layer: int, plan: Plan) -> dict[str, dict[str, float]]:
    """Per variant: mean margin retrieval at `layer` over directions between languages that had alignment data
    (English included) and over directions that touch a language without any."""
    unaligned = set(plan.unaligned)
    summary = {}
    for name, variant in probe["variants"].items():
        directions = variant["layers"][str(layer)]["directions"]
        touching = [d["margin"] for key, d in directions.items() if set(key.split("->")) & unaligned]
        among = [d["margin"] for key, d in directions.items() if not set(key.split("->")) & unaligned]
        summary[name] = {
            "aligned languages": round(fmean(among), 4) if among else None,
            "no alignment data": round(fmean(touching), 4) if touching else None,
        }
    return summary
