"""A scored merge-weight search as the tables it leaves: search.md (also the card's section) and search.json."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loramerge.merge.recipe import MergeRecipe
from loramerge.merge.search_grid import Candidate


@dataclass
class SearchRow:
    candidate: Candidate
    recipe: MergeRecipe
    means: dict[str, float | None]  # supervised / transfer / all (percent)
    languages: dict[str, float]
    weights_sha256: str = ""  # of the candidate's merged tensors: equal hashes are equal merges


def search_markdown(rows: list[SearchRow], best: SearchRow, objective: str, dev: str, metric: str) -> str:
    languages = sorted({lang for row in rows for lang in row.languages})
    header = ["candidate", "supervised", "transfer", "all", *languages]
    lines = [
        "## Merge-weight search",
        "",
        f"Candidates scored on `{dev}` ({metric}, percent, macro means over languages); chosen by the `{objective}` mean.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in rows:
        marker = " **(chosen)**" if row is best else ""
        means = [row.means.get(key) for key in ("supervised", "transfer", "all")]
        cells = ["-" if v is None else f"{v:.1f}" for v in means] + [f"{row.languages.get(lang, 0):.1f}" for lang in languages]
        lines.append(f"| {row.candidate.label}{marker} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def search_json(rows: list[SearchRow], best: SearchRow, objective: str, dev: str, metric: str) -> dict[str, Any]:
    return {
        "dev": dev,
        "metric": metric,
        "objective": objective,
        "chosen": best.candidate.label,
        "candidates": [
            {
                "label": row.candidate.label,
                "changes": {key: value for key, value in row.candidate.changes.items() if value is not None},
                "means": row.means,
                "languages": row.languages,
            }
            for row in rows
        ],
    }
