"""The demo's results.json and report.md: task scores per language group, retrieval at the aligned layer, costs."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from loramerge.demo.plan import DemoPlan as Plan


def mean_over(scores: dict[str, Any], langs: tuple[str, ...]) -> float | None:
    values = [scores[lang]["score"] for lang in langs if lang in scores]
    return round(fmean(values), 2) if values else None


def task_summary(evaluation: dict[str, Any], plan: Plan) -> dict[str, dict[str, float | None]]:
    """Per variant: the macro means of supervised, transfer with alignment data, transfer without, all transfer."""
    groups = {
        "supervised": plan.supervised,
        "transfer (aligned)": plan.aligned,
        "transfer (no alignment data)": plan.unaligned,
        "transfer": (*plan.aligned, *plan.unaligned),
    }
    return {
        name: {group: mean_over(variant["languages"], langs) for group, langs in groups.items()}
        for name, variant in evaluation["variants"].items()
    }


def retrieval_summary(retrieval: dict[str, Any], layer: int | None) -> dict[str, dict[str, Any]]:
    """Per variant: average margin retrieval accuracy at the aligned layer, and the best layer."""
    summary = {}
    for name, variant in retrieval["variants"].items():
        curve = {int(k): v["average"]["margin"] for k, v in variant["layers"].items()}
        best = max(curve, key=lambda k: curve[k])
        summary[name] = {
            "at_aligned_layer": round(curve[layer], 4) if layer in curve else None,
            "best_layer": best,
            "best": round(curve[best], 4),
        }
    return summary


def demo_results(
    plan: Plan,
    data: dict[str, Any],
    align: dict[str, Any],
    task: dict[str, Any],
    merged: dict[str, Any],
    evaluation: dict[str, Any],
    retrieval: dict[str, Any],
    layer: int | None,
    seconds: dict[str, float],
    total_seconds: float,
) -> dict[str, Any]:
    return {
        "model": plan.model,
        "plan": {key: value for key, value in asdict(plan).items() if key != "recipe_overrides"},
        "data": data,
        "training": {"align": align, "task": task},
        "merge": merged,
        "task": {"metric": evaluation["metric"], "groups": task_summary(evaluation, plan), "evaluation": "eval/results.json"},
        "retrieval": {"layer": layer, "variants": retrieval_summary(retrieval, layer), "probe": "probe/probe.json"},
        "seconds": {**seconds, "total": round(total_seconds, 1)},
    }


def retrieval_reading(retrieval: dict[str, Any]) -> str:
    """One sentence on what the alignment adapter did at its layer, computed, never assumed."""
    variants = retrieval["variants"]
    base, align = variants.get("base", {}).get("at_aligned_layer"), variants.get("align", {}).get("at_aligned_layer")
    if base is None or align is None:
        return ""
    change = 100 * (align - base)
    if change > 0:
        return f"The alignment adapter raises retrieval at layer {retrieval['layer']} by {change:.1f} points."
    return (
        f"The alignment adapter lowers retrieval at layer {retrieval['layer']} by {-change:.1f} points. BENCHMARKS.md "
        "found the same after 100 steps and a rise after 400: this short run shows the pipeline, not the method's gain."
    )


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def report_markdown(results: dict[str, Any], eval_table: str) -> str:
    plan, groups = results["plan"], results["task"]["groups"]
    variants = list(groups)
    group_names = list(next(iter(groups.values())))
    task_rows = [[group, *(fmt(groups[v][group]) for v in variants)] for group in group_names]
    retrieval = results["retrieval"]
    retrieval_rows = [
        [name, fmt(r["at_aligned_layer"], 3), f"{fmt(r['best'], 3)} (layer {r['best_layer']})"]
        for name, r in retrieval["variants"].items()
    ]
    seconds = results["seconds"]
    lines = [
        f"# loramerge demo: {results['model']}",
        "",
        'Task: the name of a country, language or currency in language X -> `{"kind": "ISO code"}`, exact match '
        f"(percent). Task training data: {', '.join(plan['supervised'])} only. Alignment pairs (gettext UI sentences, "
        f"a different domain): en <-> {', '.join(plan['aligned'])}. No alignment data: {', '.join(plan['unaligned'])}.",
        "",
        "## Task scores by language group (macro means)",
        "",
        *markdown_table(["group", *variants], task_rows),
        "",
        "![task scores](scores.png)",
        "",
        "## Per language",
        "",
        *(line for line in eval_table.splitlines() if line.startswith("|")),  # the eval report's table
        "",
        "## Cross-lingual retrieval (average top-1 margin accuracy over all directions)",
        "",
        *markdown_table(["variant", f"at the aligned layer {retrieval['layer']}", "best layer"], retrieval_rows),
        "",
        retrieval_reading(retrieval),
        "",
        "![retrieval per layer](retrieval.png)",
        "",
        "## What ran",
        "",
        *markdown_table(["step", "seconds"], [[step, f"{value:.0f}"] for step, value in seconds.items()]),
        "",
        "Adapters: `adapters/align`, `adapters/task`, `adapters/merged` (each with its model card and recipe). "
        "Rerun any step from this folder with the commands at the top of `recipes/*.yaml`. "
        "Details: `eval/results.json`, `eval/predictions/`, `probe/probe.json`.",
        "",
        "This is one seed at demo scale: differences of a few points between variants are within seed noise; "
        "`bench/quality.py` measures the spread over seeds (BENCHMARKS.md).",
        "",
    ]
    return "\n".join(lines)


def write_report(results: dict[str, Any], folder: Path) -> None:
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    eval_table = (folder / "eval" / "report.md").read_text(encoding="utf-8")
    (folder / "report.md").write_text(report_markdown(results, eval_table), encoding="utf-8")
