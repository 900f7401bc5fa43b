"""The demo's verdicts come from its own numbers: paired intervals over test items, retrieval by direction kind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loramerge.demo.findings import retrieval_by_group, task_intervals, verdict
from loramerge.demo.plan import FULL


def write_predictions(folder: Path, variant: str, scores: dict[str, list[float]]) -> None:
    rows, line = [], 0
    for lang, values in scores.items():
        for value in values:
            line += 1
            rows.append({"line": line, "lang": lang, "score": value})
    (folder / f"{variant}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_a_consistent_gain_on_transfer_items_is_reported_as_improved(tmp_path: Path) -> None:
    task = {"en": [100.0] * 40, "ru": [0.0] * 40, "de": [0.0] * 40}
    merged = {"en": [100.0] * 40, "ru": [100.0] * 10 + [0.0] * 30, "de": [0.0] * 40}  # 10 more ru items right
    write_predictions(tmp_path, "task", task)
    write_predictions(tmp_path, "merged", merged)
    result = task_intervals(tmp_path, ["task", "merged"], FULL)
    gains = result["gain over task"]
    assert gains["transfer"]["items"] == 80  # ru and de: the plan's zh_CN, ja and fr have no items here
    assert gains["transfer"]["merged"]["mean"] == pytest.approx(12.5)  # 10 of 80 items, each +100 points
    assert gains["transfer"]["merged"]["verdict"] == "improved"
    assert gains["supervised"]["merged"]["verdict"] == "no detectable change"
    assert gains["transfer (no alignment data)"]["merged"]["mean"] == 0.0
    assert result["languages"]["ru"]["merged"]["mean"] == pytest.approx(25.0)
    low, high = result["languages"]["ru"]["merged"]["low"], result["languages"]["ru"]["merged"]["high"]
    assert low < 25.0 < high
    by_language = result["gain over task by language"]  # the scores plot's second panel
    assert set(by_language) == {"en", "ru", "de"} and by_language["ru"]["items"] == 40
    assert by_language["ru"]["merged"]["mean"] == pytest.approx(25.0) and by_language["de"]["merged"]["mean"] == 0.0


def test_verdicts() -> None:
    assert verdict(0.5, 3.0) == "improved"
    assert verdict(-3.0, -0.1) == "worse"
    assert verdict(-1.0, 2.0) == "no detectable change"


def test_retrieval_splits_directions_that_touch_a_language_without_alignment_data() -> None:
    directions = {
        "en->ru": {"margin": 0.8},
        "ru->en": {"margin": 0.6},
        "en->de": {"margin": 0.3},
        "de->ru": {"margin": 0.1},
    }
    probe = {"variants": {"base": {"layers": {"9": {"directions": directions}}}}}
    summary = retrieval_by_group(probe, 9, FULL)
    assert summary["base"] == {"aligned languages": pytest.approx(0.7), "no alignment data": pytest.approx(0.2)}
