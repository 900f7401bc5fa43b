"""The demo's results.json and report.md: whether transfer improved (joint training first, then the merge), each
with its paired interval and the smallest gain the run could detect, task scores per language with intervals,
retrieval at the aligned layer, what ran and how long it took."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from statistics import fmean
from typing import TYPE_CHECKING, Any

from loramerge.demo.findings import retrieval_by_group, task_intervals

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


PRECISION_WORDS = {
    "bf16": "bf16 autocast (this machine's bf16 matrix products were measured faster than float32)",
    "no": "float32 (this machine's bf16 matrix products were not measured fast enough to pay)",
    "fp16": "fp16 autocast",
}
# The 3-seed transfer study on this task (BENCHMARKS.md, "Transfer study"): what one run is set beside.
STUDY = {
    "joint": "+3.0 [+1.4, +4.6] over 3 seeds (300 task steps, float32)",
    "merged": "-2.1 [-5.1, +0.7] over 3 seeds (300 task steps, float32)",
}


def demo_results(
    plan: Plan,
    data: dict[str, Any],
    training: dict[str, dict[str, Any]],
    merged: dict[str, Any],
    evaluation: dict[str, Any],
    retrieval: dict[str, Any],
    precision: str,
    seconds: dict[str, float],
    total_seconds: float,
    folder: Path = Path("."),
) -> dict[str, Any]:
    layer = training["align"]["align_layer"]
    intervals = task_intervals(folder / "eval" / "predictions", list(evaluation["variants"]), plan)
    by_group = retrieval_by_group(retrieval, layer, plan) if layer is not None else {}
    return {
        "model": plan.model,
        "plan": {key: value for key, value in asdict(plan).items() if key != "recipe_overrides"},
        "precision": precision,
        "data": data,
        "training": training,
        "merge": merged,
        "task": {
            "metric": evaluation["metric"],
            "groups": task_summary(evaluation, plan),
            "intervals": intervals,
            "evaluation": "eval/results.json",
            "generated_items": evaluation["settings"].get("generated_items"),
        },
        "retrieval": {
            "layer": layer,
            "variants": retrieval_summary(retrieval, layer),
            "by_direction_group": by_group,
            "probe": "probe/probe.json",
        },
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
    return f"The alignment adapter lowers retrieval at layer {retrieval['layer']} by {-change:.1f} points."


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def interval_text(entry: dict[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{entry['mean']:{sign}.1f} [{entry['low']:{sign}.1f}, {entry['high']:{sign}.1f}]"


def language_rows(results: dict[str, Any]) -> list[list[str]]:
    plan, per_language = results["plan"], results["task"]["intervals"]["languages"]
    roles = {lang: "supervised" for lang in plan["supervised"]}
    roles.update({lang: "transfer (aligned)" for lang in plan["aligned"]})
    roles.update({lang: "transfer (no alignment data)" for lang in plan["unaligned"]})
    order = [*plan["supervised"], *plan["aligned"], *plan["unaligned"]]
    return [
        [lang, roles[lang], *(interval_text(entry) for entry in per_language[lang].values())]
        for lang in order
        if lang in per_language
    ]


def gain_rows(gains: dict[str, dict[str, Any]]) -> list[list[str]]:
    return [
        [group, variant, str(entry["items"]), interval_text(gain, signed=True), f"{gain['detectable']:.1f}", gain["verdict"]]
        for variant in VARIANT_WORDS
        for group, entry in gains.items()
        for name, gain in entry.items()
        if name == variant
    ]


VARIANT_WORDS = {"joint": "joint training (task + alignment in one run)", "merged": "the merged adapter (task + alignment)"}


def transfer_reading(gains: dict[str, dict[str, Any]]) -> list[str]:
    """One paragraph per tuned variant on the transfer languages, from the paired interval: the verdict, the
    interval, the smallest gain this run detects with 80 % power, and the 3-seed study beside it."""
    transfer = gains.get("transfer", {})
    paragraphs = []
    for variant, gain in transfer.items():
        if variant == "items":
            continue
        what = {"improved": "**Transfer improved**", "worse": "**Transfer got worse**"}.get(
            gain["verdict"], "**No detectable change in transfer**"
        )
        seen = "above" if abs(gain["mean"]) > gain["detectable"] else "below"
        study = f" The 3-seed study on this task measured {STUDY[variant]}." if variant in STUDY else ""
        paragraphs.append(
            f"{what} with {VARIANT_WORDS.get(variant, variant)}: {gain['mean']:+.1f} points over task-only on the "
            f"transfer languages, 95 % interval [{gain['low']:+.1f}, {gain['high']:+.1f}] over {transfer['items']} paired "
            f"test items. This run detects a true change of {gain['detectable']:.1f} points with 80 % power; the measured "
            f"change is {seen} that.{study}"
        )
    return paragraphs


def retrieval_group_rows(retrieval: dict[str, Any]) -> list[list[str]]:
    by_group = retrieval.get("by_direction_group", {})
    base = by_group.get("base", {})
    rows = []
    for name, groups in by_group.items():
        cells = []
        for group, value in groups.items():
            change = (
                "" if name == "base" or value is None or base.get(group) is None else f" ({100 * (value - base[group]):+.1f})"
            )
            cells.append(f"{fmt(value, 3)}{change}")
        rows.append([name, *cells])
    return rows


def evaluation_words(results: dict[str, Any]) -> str:
    """How the items were scored: the one-pass exact match runs under autocast only (evaluate/evaluator.py)."""
    generated = results["task"]["generated_items"]
    if results["precision"] == "no":
        return "greedy generation of every item (float32)"
    return f"one teacher-forced pass per item, {generated} of them also generated where the pass could not decide"


def report_markdown(results: dict[str, Any]) -> str:
    plan, groups = results["plan"], results["task"]["groups"]
    variants = list(groups)
    group_names = list(next(iter(groups.values())))
    task_rows = [[group, *(fmt(groups[v][group]) for v in variants)] for group in group_names]
    gains = results["task"]["intervals"]["gain over task"]
    retrieval = results["retrieval"]
    retrieval_rows = [
        [name, fmt(r["at_aligned_layer"], 3), f"{fmt(r['best'], 3)} (layer {r['best_layer']})"]
        for name, r in retrieval["variants"].items()
    ]
    seconds = results["seconds"]
    steps = {name: entry.get("steps") for name, entry in results["training"].items()}
    lines = [
        f"# loramerge demo: {results['model']}",
        "",
        "Task: which kind of program a user-interface sentence comes from (packages, database, files, security, "
        "desktop, system), exact match (percent; chance 16.7). Task training data: "
        f"{', '.join(plan['supervised'])} only. Alignment pairs (the training sentences' translations, no labels): "
        f"en <-> {', '.join(plan['aligned'])}. No alignment data: {', '.join(plan['unaligned'])}. Test: the same "
        f"{plan['test_per_label'] * 6} sentences in every language.",
        "",
        "## Did transfer improve?",
        "",
        *(line for paragraph in transfer_reading(gains) for line in (paragraph, "")),
        *markdown_table(
            ["language group", "adapter", "paired test items", "gain over task-only [95 % interval]", "detectable", "verdict"],
            gain_rows(gains),
        ),
        "",
        "Intervals: percentile bootstrap over the test items, each item paired with itself under task-only. "
        "\"detectable\": the smallest true gain this run finds with 80 % power. The intervals cover the choice of test "
        "items, not the training seed: `bench/transfer_study.py` repeats the comparison over 3 seeds (BENCHMARKS.md, "
        "Transfer study).",
        "",
        "![task scores and gains](scores.png)",
        "",
        "## Task scores by language group (macro means)",
        "",
        *markdown_table(["group", *variants], task_rows),
        "",
        "## Per language, with 95 % intervals over the test items",
        "",
        *markdown_table(["language", "role", *variants], language_rows(results)),
        "",
        f"## Cross-lingual retrieval at the aligned layer {retrieval['layer']} (top-1 margin accuracy, dev sentences)",
        "",
        *markdown_table(
            ["variant", "directions among en and aligned languages", f"directions touching {', '.join(plan['unaligned'])}"],
            retrieval_group_rows(retrieval),
        ),
        "",
        "In brackets: the change from the base model, in points. Over all directions, and the best layer:",
        "",
        *markdown_table(["variant", f"at the aligned layer {retrieval['layer']}", "best layer"], retrieval_rows),
        "",
        retrieval_reading(retrieval),
        "",
        "![retrieval per layer](retrieval.png)",
        "",
        "## What ran",
        "",
        f"Precision: {PRECISION_WORDS.get(results['precision'], results['precision'])}. Optimizer steps: "
        + ", ".join(f"{name} {count}" for name, count in steps.items())
        + f". Evaluation: {evaluation_words(results)}.",
        "",
        *markdown_table(["step", "seconds"], [[step, f"{value:.0f}"] for step, value in seconds.items()]),
        "",
        "Adapters: `adapters/align`, `adapters/joint`, `adapters/task`, `adapters/merged` (each with its model card and "
        "recipe). Rerun any step from this folder with the commands at the top of `recipes/*.yaml`. "
        "Details: `eval/results.json`, `eval/predictions/`, `eval/report.md`, `probe/probe.json`.",
        "",
    ]
    return "\n".join(lines)


def write_report(results: dict[str, Any], folder: Path) -> None:
    (folder / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    (folder / "report.md").write_text(report_markdown(results), encoding="utf-8")
