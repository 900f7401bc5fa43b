"""What several bench scripts share: running loramerge, training a demo recipe variant, scoring adapters with
`loramerge eval`, paired seed x item intervals and their table cells. Scripts import this module (bench/ is on
sys.path when a script in it runs), never each other."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from loramerge.demo.findings import language_groups
from loramerge.demo.run import DemoPlan, demo_recipe
from loramerge.evaluate.confidence import bootstrap_interval, paired_scores
from loramerge.evaluate.run import EvalSettings, run_eval
from loramerge.recipes import apply_override, validate_recipe
from loramerge.train.recipe import Mode, TrainRecipe
from loramerge.train.run import train_adapter

Scores = dict[str, dict[int, float]]  # adapter name -> test line -> item score (percent)


def run_loramerge(*args: str) -> float:
    """Run one loramerge command in a child process; return its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "loramerge", *args], check=True)
    return time.perf_counter() - start


def first_groups(multiway: Path, groups: int, out: Path) -> Path:
    """The first `groups` English sentences of a multiway file with all their translations."""
    rows = [json.loads(line) for line in multiway.read_text(encoding="utf-8").splitlines()]
    keep = list(dict.fromkeys(row["source"] for row in rows))[:groups]
    chosen = set(keep)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["source"] in chosen), encoding="utf-8")
    return out


def train_demo_variant(
    out: Path, recipe_name: str, mode: Mode, plan: DemoPlan, paths: dict[str, str], overrides: list[str]
) -> Path:
    """recipes/GROUP/RECIPE_NAME.yaml (GROUP: the plan's recipes) with the data paths and --set style overrides, trained into `out` once
    (an adapter already there is reused: the bench scripts resume)."""
    if not (out / "adapter_model.safetensors").is_file():
        data = demo_recipe(recipe_name, plan, paths)
        for assignment in overrides:
            apply_override(data, assignment)
        train_adapter(validate_recipe(TrainRecipe, data, str(out)), mode, out, overwrite=True)
    return out


def prediction_rows(
    plan: DemoPlan, data: Path, out: Path, adapters: dict[str, str], console: Console, precision: str = "no"
) -> dict[str, list[dict[str, Any]]]:
    """`loramerge eval` of the adapters (name -> folder) on data, once (reused when out has results): the rows of
    each adapter's predictions file."""
    if not (out / "results.json").is_file():
        settings = EvalSettings(
            model=plan.model,
            data=data,
            out=out,
            adapters=tuple(f"{name}={path}" for name, path in adapters.items()),
            include_base=False,  # the base model scores 0: it does not know the answer format
            supervised=",".join(plan.supervised),
            max_new_tokens=plan.max_new_tokens,
            batch_size=32,
            precision=precision,
            overwrite=True,
        )
        run_eval(settings, console)
    return {
        name: [json.loads(line) for line in (out / "predictions" / f"{name}.jsonl").read_text().splitlines()] for name in adapters
    }


def paired_intervals(
    per_seed: list[Scores], items: list[int], names: list[str], baseline: str, compared: list[str]
) -> dict[str, Any]:
    """Each name's mean [interval] over the items, and each compared name minus the baseline, paired by seed and item
    (two-level percentile bootstrap, loramerge.evaluate.confidence)."""
    zero = [dict.fromkeys(items, 0.0) for _ in per_seed]
    entry: dict[str, Any] = {"items": len(items)}
    for name in names:
        entry[name] = bootstrap_interval(paired_scores([seed[name] for seed in per_seed], zero, items)).to_json()
    for name in compared:
        difference = paired_scores([seed[name] for seed in per_seed], [seed[baseline] for seed in per_seed], items)
        entry[f"{name} - {baseline}"] = bootstrap_interval(difference).to_json()
    return entry


def variant_comparison(
    per_seed: list[dict[str, dict[int, tuple[str, float]]]], plan: DemoPlan, variants: tuple[str, ...]
) -> dict[str, Any]:
    """Per language group of the plan: each variant's mean with its interval, and every other variant - task paired.
    per_seed: variant -> test line -> (language, item score); variants[0] is "task"."""
    result: dict[str, Any] = {}
    lines = sorted(per_seed[0]["task"])
    scores = [{variant: {line: seed[variant][line][1] for line in lines} for variant in variants} for seed in per_seed]
    for group, languages in language_groups(plan).items():
        items = [line for line in lines if per_seed[0]["task"][line][0] in languages]
        result[group] = paired_intervals(scores, items, list(variants), "task", list(variants[1:]))
    return result


def interval_cell(entry: dict[str, float], signed: bool = False) -> str:
    """mean [low, high] in percent points, with signs for differences."""
    sign = "+" if signed else ""
    return f"{entry['mean']:{sign}.1f} [{entry['low']:{sign}.1f}, {entry['high']:{sign}.1f}]"


def variant_table(comparison: dict[str, Any], variants: tuple[str, ...]) -> str:
    """variant_comparison as the markdown table BENCHMARKS.md quotes."""
    tuned = variants[1:]
    header = [
        "group",
        "test items / seed",
        "task-only",
        *tuned,
        *(f"{v} - task" for v in tuned),
        f"detectable ({', '.join(tuned)})",
    ]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for group, entry in comparison.items():
        cells = [interval_cell(entry[v]) for v in variants]
        cells += [interval_cell(entry[f"{v} - task"], signed=True) for v in tuned]
        cells.append(", ".join(f"{entry[f'{v} - task']['detectable']:.1f}" for v in tuned))
        lines.append(f"| {group} | {entry['items']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
