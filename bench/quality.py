"""Quality benchmark: task-only vs joint (train-task --pairs) vs merged (task + separately trained alignment),
per language group, over several seeds, with paired bootstrap 95 % intervals, on the iso-codes task: the data
and recipes (recipes/isocodes/) the demo ran before issue 33, with the spread one demo run cannot show.

    .venv/bin/python bench/quality.py [--seeds 0,1,2] [--test-entities 187] [--out bench/out/quality] [--quick]

Protocol (issue 14):
- splits fixed by the iso-codes builder: train (en, fr only), dev (57 entities x 6 languages), test (187 x 6);
- the one choice made here, the alignment adapter's merge weight, is made on DEV with seed 0's adapters
  (`merge --search`, objective: transfer mean); every other setting is fixed in recipes/isocodes/; TEST is read
  only by the final evaluation, after the choice;
- each seed trains all three adapters; the variants are compared item by item on the same test records;
- intervals: two-level (seed x item) percentile bootstrap of the mean per-item difference
  (loramerge.evaluate.confidence), and the smallest effect the design detects (80 % power, 5 % level).
Resumable: adapters, the search and evaluations already in --out are reused. Writes OUT/quality.json and
prints the markdown tables BENCHMARKS.md quotes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import first_groups, prediction_rows, train_demo_variant, variant_comparison, variant_table
from iso_demo import FULL, QUICK, build_data, test_subset
from rich.console import Console

from loramerge.cli.support import quiet_libraries
from loramerge.demo.plan import DemoPlan
from loramerge.demo.run import demo_recipe, working_directory

VARIANTS = ("task", "joint", "merged")


def alignment_pairs(kind: str, plan: DemoPlan) -> str:
    """The alignment pairs file for --align-data, built in the data folder if missing."""
    if kind == "ui":
        return "data/pairs-train.jsonl"
    from loramerge.data.isocodes import build_iso_task

    path = Path("data/task-domain/align-train.jsonl")
    if not path.is_file():  # the same seeded split as data/task: the same train, dev and test entities
        build_iso_task(list(plan.supervised), list(plan.transfer), path.parent, align_langs=list(plan.aligned))
    return str(path)


def merge_recipe(plan: DemoPlan, seed: int) -> dict[str, Any]:
    recipe = demo_recipe("merge", plan, {})
    for source in recipe["sources"]:
        source["path"] = source["path"].replace("adapters/", f"seed{seed}/")
    return recipe


def choose_align_weight(plan: DemoPlan, weights: str, console: Console) -> float:
    """The alignment adapter's merge weight with the best dev transfer mean, on seed 0's adapters (dev only)."""
    from loramerge.merge.recipe import MergeRecipe
    from loramerge.merge.search import SearchSettings, search_and_merge
    from loramerge.recipes import validate_recipe as validate

    chosen = Path("selection/search.json")
    if not chosen.is_file():
        settings = SearchSettings(
            specs=(f"align={weights}",),
            dev=Path("data/task/dev.jsonl"),
            model=plan.model,
            supervised=",".join(plan.supervised),
            objective="transfer",
            max_new_tokens=plan.max_new_tokens,
        )
        recipe = validate(MergeRecipe, merge_recipe(plan, 0), "merge seed 0")
        search_and_merge(recipe, settings, Path("selection/merged-seed0"), overwrite=True)
        chosen.write_text((Path("selection/merged-seed0") / "search.json").read_text())
    search = json.loads(chosen.read_text())
    label = search["chosen"]
    console.print(f"dev search: {label}")
    return float(label.split("=")[-1])


def merged(plan: DemoPlan, seed: int, align_weight: float) -> None:
    from loramerge.merge.engine import merge_adapters

    out = Path(f"seed{seed}/merged")
    if not (out / "adapter_model.safetensors").is_file():
        recipe = merge_recipe(plan, seed)
        recipe["sources"][1]["weight"] = align_weight
        merge_adapters(recipe, out, overwrite=True)


def evaluate(plan: DemoPlan, seed: int, console: Console) -> dict[str, dict[int, tuple[str, float]]]:
    """variant -> test line -> (language, item score), from eval's predictions files."""
    adapters = {variant: f"seed{seed}/{variant}" for variant in VARIANTS}
    rows = prediction_rows(plan, Path("data/task/test-bench.jsonl"), Path(f"seed{seed}/eval"), adapters, console)
    return {variant: {row["line"]: (row["lang"], float(row["score"])) for row in found} for variant, found in rows.items()}


def retrieval_curve(metrics: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return {row["step"]: row["eval_retrieval"] for row in rows if "eval_retrieval" in row and not row.get("final")}


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--test-entities", type=int, default=187, help="test entities (all 187) x 6 languages x 3 variants")
    parser.add_argument("--align-weights", default="0.25,0.5,1", help="merge weights of the alignment adapter tried on dev")
    parser.add_argument(
        "--align-data",
        choices=("ui", "task-domain"),
        default="ui",
        help="alignment pairs: gettext UI sentences (the demo's, out of domain) or the names of the task's TRAIN "
        "entities in the aligned languages (in domain, no labels, no dev/test entity)",
    )
    parser.add_argument("--dev-only", action="store_true", help="stop after the dev selection: never reads test")
    parser.add_argument("--align-eval-every", type=int, default=20, help="steps between dev retrieval evaluations")
    parser.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    parser.add_argument("--quick", action="store_true", help="the demo's --quick plan: a smoke run of this script")
    options = parser.parse_args()
    plan = QUICK if options.quick else FULL
    seeds = [int(seed) for seed in options.seeds.split(",")]
    console = Console(stderr=True)
    options.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    with working_directory(options.out):
        if not Path("data/task/test.jsonl").is_file():
            build_data(plan, console)
        pairs = alignment_pairs(options.align_data, plan)
        test_subset(Path("data/task/test.jsonl"), options.test_entities, Path("data/task/test-bench.jsonl"))
        dev_probe = first_groups(Path("data/probe-dev.jsonl"), 100, Path("data/probe-dev-100.jsonl"))
        for seed in seeds:
            console.rule(f"training, seed {seed} ({time.perf_counter() - started:.0f} s so far)")
            # the alignment adapter logs margin retrieval on dev sentences as it trains: is the rise monotonic?
            curve = [f"eval_pairs={dev_probe}", f"eval_every={options.align_eval_every}"]
            train_demo_variant(Path(f"seed{seed}/align"), "align", "align", plan, {"pairs": pairs}, [f"seed={seed}", *curve])
            train_demo_variant(
                Path(f"seed{seed}/task"), "task", "task", plan, {"data": "data/task/train.jsonl"}, [f"seed={seed}"]
            )
            if not options.dev_only:  # the dev selection scores merges only
                joint_paths = {"data": "data/task/train.jsonl", "pairs": pairs}
                train_demo_variant(Path(f"seed{seed}/joint"), "joint", "task", plan, joint_paths, [f"seed={seed}"])
        seconds["training"] = time.perf_counter() - started
        console.rule("selection on dev")
        align_weight = choose_align_weight(plan, options.align_weights, console)
        seconds["selection"] = time.perf_counter() - started - seconds["training"]
        if options.dev_only:
            print(Path("selection/search.json").read_text())
            return
        per_seed = []
        for seed in seeds:
            console.rule(f"test evaluation, seed {seed}")
            merged(plan, seed, align_weight)
            per_seed.append(evaluate(plan, seed, console))
        comparison = variant_comparison(per_seed, plan, VARIANTS)
        curves = {seed: retrieval_curve(Path(f"seed{seed}/align/metrics.jsonl")) for seed in seeds}
        seconds["total"] = time.perf_counter() - started
        result = {
            "model": plan.model,
            "seeds": seeds,
            "test_entities": options.test_entities,
            "align_data": options.align_data,
            "align_weight_chosen_on_dev": align_weight,
            "comparison": comparison,
            "align_dev_retrieval": curves,
            "seconds": {k: round(v) for k, v in seconds.items()},
            "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "torch_threads": torch.get_num_threads(),
            "command": " ".join(sys.argv),
        }
        Path("quality.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(variant_table(comparison, VARIANTS))
    print("\n| seed | dev margin retrieval at the aligned layer by step (all transfer languages) |\n|---|---|")
    for seed, curve in curves.items():
        print(f"| {seed} | " + " ".join(f"{step}: {100 * value:.1f}" for step, value in curve.items()) + " |")
    print(
        f"\n{len(seeds)} seeds, {options.test_entities} test entities x 6 languages; align weight {align_weight} "
        f"(chosen on dev); exact match, percent, mean [95 % interval]; {result['seconds']} s"
    )


if __name__ == "__main__":
    main()
