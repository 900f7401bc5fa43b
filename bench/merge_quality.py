"""Merge quality on real adapters: three task adapters (the iso-codes task split by entity kind: country,
language, currency), each trained on bundled Gemma-3-270M, merged by cat, ties, tsv, iso_c and iso_cts with
every method's documented defaults and weight 1 each, scored per task with `loramerge eval`.

    .venv/bin/python bench/merge_quality.py [--seeds 0,1,2] [--out bench/out/merge-quality] [--quick]

Protocol: nothing is chosen (defaults only), so there is no dev selection and the test split is read once.
Items: every test entity of a kind, in the training languages en and fr (the adapters learn one kind each;
cross-lingual transfer is not what this measures). Each task adapter alone on its own kind is the ceiling a
merge can approach; "kept" is a method's score over that ceiling. Per method and task: the mean over seeds and
items with a two-level (seed x item) percentile bootstrap interval, and the paired difference to cat.
Resumable: adapters and evaluations already in --out are reused. Writes OUT/merge_quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from loramerge.cli.support import quiet_libraries
from loramerge.demo.run import FULL, QUICK, DemoPlan, build_data, demo_recipe, working_directory
from loramerge.evaluate.confidence import bootstrap_interval, paired_scores
from loramerge.recipes import apply_override, validate_recipe
from loramerge.train.recipe import TrainRecipe

KINDS = ("country", "language", "currency")
METHODS = ("cat", "ties", "tsv", "iso_c", "iso_cts")
LANGUAGES = ("en", "fr")


def split_by_kind(source: Path, folder: Path, languages: tuple[str, ...] | None) -> dict[str, Path]:
    """One JSONL per entity kind (the id's prefix, e.g. 'country:AD'), optionally only some languages.

    The prompt names the kind ('Country: Andorra' instead of 'Name: Andorra'): each adapter learns one task,
    and a merged model can tell the tasks apart. With the shared 'Name:' prompt (first run, seed 0) every
    adapter learns to always answer with its own JSON key, and every merge scored 0 on two of the three kinds:
    a conflict no merge method can resolve, not a difference between methods.
    """
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in KINDS:
        chosen = [
            {**r, "prompt": r["prompt"].replace("Name: ", f"{kind.capitalize()}: ", 1)}
            for r in records
            if r["id"].split(":")[0] == kind and (languages is None or r["lang"] in languages)
        ]
        paths[kind] = folder / f"{kind}.jsonl"
        paths[kind].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    return paths


def train_kind(kind: str, data: Path, plan: DemoPlan, seed: int) -> Path:
    from loramerge.train.run import train_adapter

    out = Path(f"seed{seed}/task-{kind}")
    if not (out / "adapter_model.safetensors").is_file():
        recipe = demo_recipe("task", plan, {"data": str(data)})
        apply_override(recipe, f"seed={seed}")
        train_adapter(validate_recipe(TrainRecipe, recipe, f"task-{kind} seed {seed}"), "task", out, overwrite=True)
    return out


def merge_all(adapters: list[Path], seed: int) -> dict[str, Path]:
    from loramerge.merge.engine import merge_adapters

    outputs = {}
    for method in METHODS:
        outputs[method] = Path(f"seed{seed}/merged-{method}")
        if not (outputs[method] / "adapter_model.safetensors").is_file():
            recipe = {"sources": [{"path": str(path)} for path in adapters], "method": method}
            merge_adapters(recipe, outputs[method], overwrite=True)
    return outputs


def evaluate(names: dict[str, Path], test: Path, plan: DemoPlan, seed: int, console: Console) -> dict[str, dict[int, float]]:
    """adapter name -> test line -> item score."""
    from quality import prediction_rows  # bench/ is on sys.path when this file runs as a script

    rows = prediction_rows(plan, test, Path(f"seed{seed}/eval"), {name: str(path) for name, path in names.items()}, console)
    return {name: {row["line"]: float(row["score"]) for row in found} for name, found in rows.items()}


def compare(per_seed: list[dict[str, dict[int, float]]], kinds_of_lines: dict[int, str]) -> dict[str, Any]:
    """Per task: each method's and the task's own adapter's mean [interval], and method - cat paired."""
    result: dict[str, Any] = {}
    for kind in KINDS:
        items = sorted(line for line, found in kinds_of_lines.items() if found == kind)
        zero = [dict.fromkeys(items, 0.0) for _ in per_seed]
        entry: dict[str, Any] = {"items": len(items)}
        for name in (f"task-{kind}", *METHODS):
            entry[name] = bootstrap_interval(paired_scores([seed[name] for seed in per_seed], zero, items)).to_json()
        for method in METHODS[1:]:
            difference = paired_scores([seed[method] for seed in per_seed], [seed["cat"] for seed in per_seed], items)
            entry[f"{method} - cat"] = bootstrap_interval(difference).to_json()
        result[kind] = entry
    return result


def cell(entry: dict[str, float], signed: bool = False) -> str:
    """Item scores are already percent (eval scores an exact match 100)."""
    mean = f"{entry['mean']:+.1f}" if signed else f"{entry['mean']:.1f}"
    return f"{mean} [{entry['low']:.1f}, {entry['high']:.1f}]"


def tables(comparison: dict[str, Any]) -> str:
    lines = [
        "| task | items / seed | own adapter alone | " + " | ".join(METHODS) + " |",
        "|---|---:|---:|" + "---:|" * len(METHODS),
    ]
    for kind, entry in comparison.items():
        row = [kind, str(entry["items"]), cell(entry[f"task-{kind}"]), *(cell(entry[m]) for m in METHODS)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| task | " + " | ".join(f"{m} - cat" for m in METHODS[1:]) + " |", "|---|" + "---:|" * (len(METHODS) - 1)]
    for kind, entry in comparison.items():
        lines.append("| " + " | ".join([kind, *(cell(entry[f"{m} - cat"], signed=True) for m in METHODS[1:])]) + " |")
    return "\n".join(lines)


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("bench/out/merge-quality"))
    parser.add_argument("--quick", action="store_true", help="the demo's --quick plan: a smoke run of this script")
    options = parser.parse_args()
    plan = QUICK if options.quick else FULL
    seeds = [int(seed) for seed in options.seeds.split(",")]
    console = Console(stderr=True)
    options.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with working_directory(options.out):
        if not Path("data/task/test.jsonl").is_file():
            build_data(plan, console)
        train_files = split_by_kind(Path("data/task/train.jsonl"), Path("data/by-kind/train"), None)
        test_files = split_by_kind(Path("data/task/test.jsonl"), Path("data/by-kind/test"), LANGUAGES)
        test = Path("data/by-kind/test-all.jsonl")
        test.write_text("".join(path.read_text(encoding="utf-8") for path in test_files.values()), encoding="utf-8")
        kinds_of_lines = {
            line: json.loads(text)["id"].split(":")[0]
            for line, text in enumerate(test.read_text(encoding="utf-8").splitlines(), 1)
        }
        per_seed = []
        for seed in seeds:
            console.rule(f"seed {seed} ({time.perf_counter() - started:.0f} s so far)")
            adapters = [train_kind(kind, train_files[kind], plan, seed) for kind in KINDS]
            merged = merge_all(adapters, seed)
            names = {f"task-{kind}": path for kind, path in zip(KINDS, adapters)} | merged
            per_seed.append(evaluate(names, test, plan, seed, console))
        comparison = compare(per_seed, kinds_of_lines)
        result = {
            "model": plan.model,
            "seeds": seeds,
            "languages": LANGUAGES,
            "comparison": comparison,
            "seconds": round(time.perf_counter() - started),
            "command": " ".join(sys.argv),
        }
        Path("merge_quality.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(tables(comparison))
    print(f"\n{len(seeds)} seeds; exact match, percent, mean [95 % interval]; {result['seconds']} s")


if __name__ == "__main__":
    main()
