"""The outputs of `loramerge eval`: results.json, report.md (one table), scores.png (grouped bars) and
predictions/<variant>.jsonl. The table and the chart are drawn from the results dictionary alone, so they can
be redrawn from a results.json."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from loramerge.evaluate.evaluator import VariantScores
from loramerge.evaluate.metrics import Metric, split_languages
from loramerge.hashing import sha256_of_file

MEAN_ROWS = (("supervised", "supervised mean"), ("transfer", "transfer mean"), ("all", "all languages"))


def build_results(
    model: str,
    data: Path,
    metric: Metric,
    supervised: list[str] | None,
    settings: dict[str, Any],
    variants: dict[str, VariantScores],
) -> dict[str, Any]:
    """Everything needed to read and reproduce the numbers: inputs with the data file's digest, settings,
    and per variant the per-language scores and counts, the group means and the speed."""
    languages = sorted({lang for scores in variants.values() for lang in scores.languages})
    groups = split_languages(languages, supervised) if supervised is not None else (None, None)
    wanted = set(supervised) if supervised is not None else None
    records = len(next(iter(variants.values())).predictions) if variants else 0
    return {
        "model": model,
        "data": {"path": str(data), "sha256": sha256_of_file(data), "records": records},
        "metric": {"name": metric.name, "description": metric.description, "unit": "percent"},
        "languages": languages,
        "groups": {"supervised": groups[0], "transfer": groups[1]},
        "settings": settings,
        "variants": {
            name: {
                "languages": {lang: asdict(score) for lang, score in scores.languages.items()},
                "means": scores.group_means(wanted),
                "seconds": round(scores.seconds, 3),
                "generations_per_second": round(len(scores.predictions) / scores.seconds, 3) if scores.seconds > 0 else None,
            }
            for name, scores in variants.items()
        },
    }


@dataclass(frozen=True)
class SummaryRow:
    label: str  # a language, or a mean's name
    group: str  # "supervised", "transfer", "mean", or "" without --supervised
    size: str  # records of a language, languages of a mean
    values: list[float | None]  # one per variant; None for a mean over no language


def _language_order(results: dict[str, Any]) -> list[tuple[str, str]]:
    """(language, group) in table order: supervised languages first, then transfer; no group without --supervised."""
    groups = results["groups"]
    if groups["supervised"] is None:
        return [(lang, "") for lang in results["languages"]]
    return [(lang, "supervised") for lang in groups["supervised"]] + [(lang, "transfer") for lang in groups["transfer"]]


def summary_rows(results: dict[str, Any]) -> list[SummaryRow]:
    """One row per language, then the group means; a value per variant. The table and the chart show these."""
    variants = list(results["variants"].values())
    rows = [
        SummaryRow(lang, group, str(variants[0]["languages"][lang]["count"]), [v["languages"][lang]["score"] for v in variants])
        for lang, group in _language_order(results)
    ]
    for key, label in MEAN_ROWS:
        if key == "all" or results["groups"]["supervised"] is not None:
            members = results["groups"][key] if key != "all" else results["languages"]
            rows.append(SummaryRow(label, "mean", f"{len(members)} lang", [v["means"][key] for v in variants]))
    return rows


def table_cells(results: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of text cells, scores with one decimal."""
    header = ["language", "group", "n", *results["variants"]]
    cells = [
        [row.label, row.group, row.size, *("-" if v is None else f"{v:.1f}" for v in row.values)] for row in summary_rows(results)
    ]
    return header, cells


def report_markdown(results: dict[str, Any]) -> str:
    header, rows = table_cells(results)
    metric, data, settings = results["metric"], results["data"], results["settings"]
    lines = [
        f"# Task evaluation: {results['model']}",
        "",
        f"Data: `{data['path']}` ({data['records']} records, sha256 `{data['sha256'][:12]}`). "
        f"Metric: {metric['description']}, in percent. Means are macro averages over languages.",
        f"Greedy decoding, at most {settings['max_new_tokens']} new tokens, batch size {settings['batch_size']}, {settings['dtype']}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if index < 2 else "---:" for index in range(len(header))) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
    ]
    return "\n".join(lines)


def plot_scores(results: dict[str, Any], path: Path) -> None:
    """Grouped bars: a group per language (then the means), a bar per variant, on a 0-100 scale."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    from matplotlib import pyplot

    rows = summary_rows(results)
    names = list(results["variants"])
    labels = [row.label.replace(" ", "\n") for row in rows]
    width = 0.8 / len(names)
    figure, axis = pyplot.subplots(figsize=(max(6.0, 0.5 + len(rows) * (0.3 + 0.25 * len(names))), 4))
    for index, name in enumerate(names):
        heights = [row.values[index] or 0.0 for row in rows]
        positions = [group + (index - (len(names) - 1) / 2) * width for group in range(len(rows))]
        axis.bar(positions, heights, width, label=name)
    means_start = sum(1 for row in rows if row.group != "mean")
    axis.axvline(means_start - 0.5, color="grey", linewidth=0.8, linestyle=":")  # languages | means
    axis.set_xticks(range(len(rows)), labels)
    axis.set_ylim(0, 100)
    axis.set_ylabel(f"{results['metric']['name']} (%)")
    axis.set_title(f"{results['model']}: {results['metric']['description']}", fontsize=9)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def write_outputs(folder: Path, results: dict[str, Any], variants: dict[str, VariantScores]) -> list[str]:
    """Write every output into folder; returns warnings (the chart is left out where matplotlib is not installed:
    it comes with the test and demo extras, and the numbers must not be lost for want of a picture)."""
    (folder / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(report_markdown(results), encoding="utf-8")
    warnings = []
    if importlib.util.find_spec("matplotlib") is None:
        warnings.append("matplotlib is not installed, so scores.png was not drawn; pip install matplotlib for the chart")
    else:
        plot_scores(results, folder / "scores.png")
    (folder / "predictions").mkdir()
    for name, scores in variants.items():
        lines = (json.dumps(prediction.to_json(), ensure_ascii=False) + "\n" for prediction in scores.predictions)
        (folder / "predictions" / f"{name}.jsonl").write_text("".join(lines), encoding="utf-8")
    return warnings
