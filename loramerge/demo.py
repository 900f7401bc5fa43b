"""The merge example behind `loramerge demo` (until the full cross-lingual demo lands).

It builds a tiny random Llama, makes a 'task' adapter and an 'alignment' adapter with PEFT (different
ranks, rsLoRA, the alignment one only in the lower half of the layers, as train-align makes them),
merges them exactly and to rank 8, and checks the merged adapter's logits against the base model with
the weighted sum of updates applied by hand.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.table import Table

from loramerge.atomic import atomic_directory, output_dir_problem
from loramerge.errors import LoramergeError
from loramerge.examples import ALL_LINEAR, load_model, make_random_adapter, save_tiny_llama
from loramerge.merge import merge_adapters
from loramerge.verify import merged_logits_gap

WEIGHTS = (1.0, 0.5)


@contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def run_demo(out: Path, quick: bool, overwrite: bool, console: Console) -> Path:
    if (problem := output_dir_problem(out, overwrite)) is not None:
        raise LoramergeError(problem)
    with atomic_directory(out) as staging, working_directory(staging):
        # Paths are relative to the demo folder, so the recorded base model and inputs stay valid
        # after the staging folder is renamed into place.
        console.print("[bold]1/3[/bold] building a tiny random Llama and two PEFT adapters")
        base = save_tiny_llama(Path("base"), num_hidden_layers=2 if quick else 4)
        layers = load_model(base).config.num_hidden_layers
        task = make_random_adapter(base, Path("task"), seed=1, r=8, lora_alpha=16, target_modules=ALL_LINEAR)
        align = make_random_adapter(
            base,
            Path("align"),
            seed=2,
            r=4,
            lora_alpha=8,
            use_rslora=True,
            target_modules=ALL_LINEAR,
            layers_to_transform=list(range(layers // 2)),
        )
        results = {}
        for method, rank in (("cat", None), ("svd", 8)):
            console.print(f"[bold]2/3[/bold] merging task + 0.5 x align with method {method}")
            recipe = {
                "sources": [{"path": str(task), "weight": WEIGHTS[0]}, {"path": str(align), "weight": WEIGHTS[1]}],
                "method": method,
                "rank": rank,
            }
            merged = merge_adapters(recipe, Path(f"merged-{method}"))
            gap = merged_logits_gap(base, [task, align], list(WEIGHTS), merged.out)
            results[method] = {
                "max_relative_error": merged.report["max_relative_error"],
                "logit_gap": gap,
                "rank_max": merged.report["rank_max"],
            }
        console.print("[bold]3/3[/bold] checked merged adapters against the exact weighted sum")
        Path("results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    table = Table("method", "rank", "max relative error", "max |logit gap| vs exact sum")
    for method, result in results.items():
        table.add_row(method, str(result["rank_max"]), f"{result['max_relative_error']:.2e}", f"{result['logit_gap']:.2e}")
    console.print(table)
    if results["cat"]["logit_gap"] > 1e-4:
        raise RuntimeError(f"exact merge differs from the weighted sum by {results['cat']['logit_gap']:.2e}")
    console.print(f"outputs in {out}")
    return out
