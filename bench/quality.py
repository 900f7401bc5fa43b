"""Quality benchmark: task-only vs joint (train-task --pairs) vs merged (task + separately trained alignment),
per language group, over several seeds. The demo's data and recipes (recipes/demo/), so the numbers are what
`loramerge demo` would show, with the spread that one demo run cannot.

    .venv/bin/python bench/quality.py [--seeds 0,1,2] [--test-entities 50] [--out bench-out/quality] [--quick]

Resumable: an adapter or evaluation already in --out is reused, so an interrupted run continues where it was.
Writes OUT/quality.json and prints the markdown table that BENCHMARKS.md quotes. The test split is never used
for any choice: the merge weight was chosen on the dev split (merge --search, BENCHMARKS.md) and all
hyperparameters are fixed in advance (recipes/demo/).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from loramerge.cli.support import quiet_libraries
from loramerge.demo.report import task_summary
from loramerge.demo.run import FULL, QUICK, DemoPlan, build_data, demo_recipe, test_subset, working_directory
from loramerge.recipes import apply_override, validate_recipe
from loramerge.train.recipe import TrainRecipe

VARIANTS = ("task", "joint", "merged")
GROUPS = ("supervised", "transfer (aligned)", "transfer (no alignment data)", "transfer")


def train(name: str, recipe_name: str, mode: str, plan: DemoPlan, paths: dict[str, str], seed: int, steps_factor: float) -> None:
    from loramerge.train.run import train_adapter

    out = Path(f"seed{seed}/{name}")
    if (out / "adapter_model.safetensors").is_file():
        return
    data = demo_recipe(recipe_name, plan, paths)
    apply_override(data, f"seed={seed}")
    data["max_steps"] = round(data["max_steps"] * steps_factor)  # the same ratios as the demo, longer
    train_adapter(validate_recipe(TrainRecipe, data, f"{recipe_name} seed {seed}"), mode, out, overwrite=True)  # type: ignore[arg-type]


def merged(plan: DemoPlan, seed: int) -> None:
    """recipes/demo/merge.yaml (its weights chosen on the dev split, never on test) on this seed's adapters."""
    from loramerge.merge.engine import merge_adapters

    out = Path(f"seed{seed}/merged")
    if not (out / "adapter_model.safetensors").is_file():
        recipe = demo_recipe("merge", plan, {})
        for source in recipe["sources"]:
            source["path"] = source["path"].replace("adapters/", f"seed{seed}/")
        merge_adapters(recipe, out, overwrite=True)


def evaluate(plan: DemoPlan, seed: int, console: Console) -> dict[str, Any]:
    from loramerge.evaluate.run import EvalSettings, run_eval

    out = Path(f"seed{seed}/eval")
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    settings = EvalSettings(
        model=plan.model,
        data=Path("data/task/test-bench.jsonl"),
        out=out,
        adapters=tuple(f"{name}=seed{seed}/{name}" for name in VARIANTS),
        include_base=False,  # the base model scores 0: it does not know the answer format
        supervised=",".join(plan.supervised),
        max_new_tokens=plan.max_new_tokens,
        overwrite=True,
    )
    return run_eval(settings, console)


def spread(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(per_seed: dict[int, dict[str, dict[str, float | None]]]) -> str:
    """Mean ± sample std over seeds; the gain columns are per-seed differences to task-only (paired)."""
    lines = [
        "| group | task-only | joint | merged | joint - task | merged - task |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for group in GROUPS:
        cells = []
        for variant in VARIANTS:
            values = [scores[variant][group] for scores in per_seed.values()]
            cells.append(spread([v for v in values if v is not None]))
        for variant in ("joint", "merged"):
            gains = [scores[variant][group] - scores["task"][group] for scores in per_seed.values()]  # type: ignore[operator]
            cells.append(spread(gains))
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--test-entities", type=int, default=50, help="test entities x 6 languages x 3 variants")
    parser.add_argument("--out", type=Path, default=Path("bench-out/quality"))
    parser.add_argument("--steps-factor", type=float, default=1.0, help="scale every recipe's max_steps (2.5: a larger run)")
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
        test_subset(Path("data/task/test.jsonl"), options.test_entities, Path("data/task/test-bench.jsonl"))
        per_seed = {}
        for seed in seeds:
            console.rule(f"seed {seed} ({time.perf_counter() - started:.0f} s so far)")
            train("align", "align", "align", plan, {"pairs": "data/pairs-train.jsonl"}, seed, options.steps_factor)
            train("task", "task", "task", plan, {"data": "data/task/train.jsonl"}, seed, options.steps_factor)
            joint_paths = {"data": "data/task/train.jsonl", "pairs": "data/pairs-train.jsonl"}
            train("joint", "joint", "task", plan, joint_paths, seed, options.steps_factor)
            merged(plan, seed)
            per_seed[seed] = task_summary(evaluate(plan, seed, console), plan)
        result = {
            "model": plan.model,
            "seeds": seeds,
            "test_entities": options.test_entities,
            "steps_factor": options.steps_factor,
            "per_seed": per_seed,
            "seconds": round(time.perf_counter() - started),
            "threads": os.environ.get("OMP_NUM_THREADS", "default"),
            "command": " ".join(sys.argv),
        }
        Path("quality.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(table(per_seed))
    print(f"\n{len(seeds)} seeds, {options.test_entities} test entities x 6 languages, {result['seconds']} s")


if __name__ == "__main__":
    main()
