"""`loramerge merge` and `loramerge export`: flags to a merge recipe, one library call, a summary table.

The merge library (and torch under it) is imported inside the commands, so `loramerge --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from loramerge.cli.hub import PushToOption, check_push_target, push_output
from loramerge.cli.options import DebugOption, OverwriteOption
from loramerge.cli.support import console, run_safely
from loramerge.errors import LoramergeError
from loramerge.parsing import parse_float_list

if TYPE_CHECKING:
    from loramerge.merge.engine import MergeResult
    from loramerge.merge.recipe import MergeRecipe
    from loramerge.merge.search import SearchSettings

OverridesOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a recipe key, e.g. --set sources.1.weight=0.5 (repeatable).")
]


def check_sources_given_once(recipe: Path | None, file_data: dict[str, Any], overrides: list[str] | None) -> None:
    """Adapters given as arguments replace the recipe's sources; what that would drop silently is refused."""
    for assignment in overrides or []:
        if assignment.split("=", 1)[0].strip().split(".")[0] == "sources":
            raise LoramergeError(
                f"--set {assignment}: the adapters given as arguments replace the recipe's sources, so this would be "
                "ignored; set their weights with --weights, or list the adapters under 'sources' in the recipe"
            )
    if file_data.get("sources"):
        raise LoramergeError(
            f"{recipe} lists 'sources' and adapters are given as arguments too; give the adapters one way: drop the "
            "arguments, or the recipe's 'sources'"
        )


def merge_recipe_from_flags(
    sources: list[str] | None, recipe: Path | None, overrides: list[str] | None, weights: str | None, flags: dict[str, Any]
) -> MergeRecipe:
    """Recipe file < --set < flags. SRC arguments stand for the recipe's sources (a recipe that lists its own, or a
    --set on them, is refused); --weights sets their weights."""
    from loramerge.merge.recipe import MergeRecipe
    from loramerge.recipes import apply_override, override_origins, recipe_data, validate_recipe

    data = recipe_data(recipe)
    if sources:
        check_sources_given_once(recipe, data, overrides)
        data["sources"] = [{"path": path} for path in sources]
    for assignment in overrides or []:  # after the sources: none of them touches the ones given as arguments
        apply_override(data, assignment)
    if not data.get("sources"):
        raise LoramergeError("no adapters to merge: pass adapter folders as arguments or a --recipe with 'sources'")
    if weights is not None:
        values = parse_float_list(weights, "--weights")
        if not isinstance(data["sources"], list) or len(values) != len(data["sources"]):
            raise LoramergeError(
                f"--weights has {len(values)} values for {len(data['sources'])} adapters; give one weight per adapter"
            )
        for source, value in zip(data["sources"], values):
            if isinstance(source, dict):
                source["weight"] = value
    data.update({key: value for key, value in flags.items() if value is not None})
    return validate_recipe(MergeRecipe, data, str(recipe) if recipe else "arguments", override_origins(overrides, flags))


def progress_columns(label: str) -> tuple[ProgressColumn, ...]:
    return (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("{task.description}"))


def run_merge_command(
    merge_recipe: MergeRecipe, out: Path, overwrite: bool, verb: str = "merging", strict: bool = False
) -> MergeResult:
    from loramerge.merge.engine import merge_adapters

    with Progress(*progress_columns(verb), console=console, transient=True) as progress:
        task = progress.add_task("", total=None)

        def advance(name: str) -> None:
            progress.update(task, advance=1, description=name)

        return merge_adapters(merge_recipe, out, overwrite=overwrite, on_module=advance, strict=strict)


def run_search_command(
    merge_recipe: MergeRecipe, settings: SearchSettings, out: Path, overwrite: bool, strict: bool = False
) -> MergeResult:
    from loramerge.merge.search import search_and_merge

    with Progress(*progress_columns("searching"), console=console, transient=True) as progress:
        task = progress.add_task("", total=None)

        def announce(index: int, candidate: Any) -> None:
            progress.update(task, completed=index, description=candidate.label)

        result, rows, best = search_and_merge(merge_recipe, settings, out, overwrite, announce, strict=strict)
    table = Table(
        "candidate", "supervised", "transfer", "all", title=f"dev {settings.metric} (percent); chosen by {settings.objective}"
    )
    for row in rows:
        cells = ["-" if row.means.get(k) is None else f"{row.means[k]:.1f}" for k in ("supervised", "transfer", "all")]
        table.add_row(f"{row.candidate.label}{' (chosen)' if row is best else ''}", *cells)
    console.print(table)
    return result


def print_merge_summary(result: MergeResult) -> None:
    from loramerge.merge.report import describe_layout

    report = result.report
    table = Table(show_header=False, box=None)
    table.add_row("output", str(result.out))
    table.add_row("method", f"{report['method']} ({'exact' if report['exact'] else 'approximate'})")
    table.add_row("modules", str(report["modules_merged"]))
    ranks = report["rank_min"], report["rank_max"]
    table.add_row("rank", str(ranks[0]) if ranks[0] == ranks[1] else f"{ranks[0]}-{ranks[1]}")
    table.add_row("layout", describe_layout(report["layout"]))
    table.add_row("max relative error", f"{report['max_relative_error']:.2e}")
    if "max_dtype_relative_error" in report:  # what rounding to --dtype adds to the written factors
        table.add_row("+ rounding to the dtype", f"{report['max_dtype_relative_error']:.2e}")
    cancellation = report["cancellation"]
    if cancellation["zero"]:
        table.add_row("norm", "[bold red]ZERO: the adapter changes nothing[/bold red]")
    elif cancellation["relative_norm"] is not None:
        table.add_row("norm", f"{cancellation['relative_norm']:.2e} of the largest input's")
    console.print(table)
    for index, warning in enumerate(result.warnings):  # the cancellation warning comes first: louder when zero
        label = "[bold red]warning:[/bold red]" if index == 0 and cancellation["zero"] else "[yellow]warning:[/yellow]"
        console.print(f"{label} {warning}")


def merge(
    out: Annotated[Path, typer.Option("--out", help="Folder for the merged adapter.")],
    sources: Annotated[
        Optional[list[str]], typer.Argument(help="PEFT LoRA adapter folders or Hub ids org/name[@revision].", show_default=False)
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option("--weights", help="Comma-separated weights, one per adapter (default 1 each; may be negative)."),
    ] = None,
    method: Annotated[
        Optional[str],
        typer.Option(
            "--method",
            help="cat (exact, default), svd; core space: tsv, iso_c, iso_cts, knots_ties, core_ties, core_dare; "
            "dense: ties, dare_ties, dare_linear, magnitude_prune; linear (PEFT compatibility).",
        ),
    ] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", help="Output rank for svd and the sparsifying methods.")] = None,
    energy: Annotated[
        Optional[float], typer.Option("--energy", help="Or keep this fraction of each update's energy (0-1].")
    ] = None,
    recipe: Annotated[
        Optional[Path], typer.Option("--recipe", help="YAML merge recipe (per-layer and per-module weights).")
    ] = None,
    overrides: OverridesOption = None,
    dtype: Annotated[Optional[str], typer.Option("--dtype", help="float32, bfloat16 or float16 (default: the inputs').")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed of the random methods (dare_*, core_dare).")] = None,
    overwrite: OverwriteOption = False,
    allow_base_mismatch: Annotated[
        bool, typer.Option("--allow-base-mismatch", help="Merge adapters whose base_model_name_or_path differ.")
    ] = False,
    push_to: PushToOption = None,
    layout: Annotated[
        Optional[str],
        typer.Option(
            "--layout", help="portable (default: one rank, no patterns; PEFT, vLLM, llama.cpp, TGI) or compact (PEFT, vLLM)."
        ),
    ] = None,
    search: Annotated[
        Optional[list[str]],
        typer.Option(
            "--search",
            help="Weight grid to score on --dev: NAME=0,0.5,1 (a source's folder name or position), NAME@0-4=0,1 "
            "(a layer-range rule), or a grid .yaml; repeat for a cartesian product. The best is written to --out.",
        ),
    ] = None,
    dev: Annotated[Optional[Path], typer.Option("--dev", help="Task JSONL dev set for --search (records carry lang).")] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", help="Base model for --search (default: the adapters' base model).")
    ] = None,
    supervised: Annotated[
        Optional[str], typer.Option("--supervised", help="--search: the task's training languages, e.g. en,fr.")
    ] = None,
    search_objective: Annotated[
        str, typer.Option("--search-objective", help="--search picks the best mean over: all, transfer or supervised.")
    ] = "all",
    metric: Annotated[str, typer.Option("--metric", help="--search: exact, chrf or f1.")] = "exact",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", help="--search: longest answer in tokens.")] = 32,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Refuse (exit 2, nothing written) a merge whose inputs cancel, instead of warning about it."
        ),
    ] = False,
    debug: DebugOption = False,
) -> None:
    """Combine PEFT LoRA adapters by weighted tensor arithmetic into one adapter, without the base model."""

    def action() -> None:
        flags = {
            "method": method,
            "rank": rank,
            "energy": energy,
            "dtype": dtype,
            "seed": seed,
            "allow_base_mismatch": allow_base_mismatch or None,
            "layout": layout,
        }
        check_push_target(push_to)
        merge_recipe = merge_recipe_from_flags(sources, recipe, overrides, weights, flags)
        if search or dev is not None:
            if not search or dev is None:
                raise LoramergeError("--search and --dev go together: a weight grid and the dev set that scores it")
            from loramerge.merge.search import SearchSettings

            settings = SearchSettings(tuple(search), dev, model, supervised, search_objective, metric, max_new_tokens)
            result = run_search_command(merge_recipe, settings, out, overwrite, strict)
        else:
            result = run_merge_command(merge_recipe, out, overwrite, strict=strict)
        print_merge_summary(result)
        if push_to is not None:
            push_output(result.out, push_to)

    run_safely(debug, action)


def export(
    source: Annotated[
        str, typer.Argument(help="Any PEFT LoRA adapter folder or Hub id org/name[@revision].", show_default=False)
    ],
    out: Annotated[Path, typer.Option("--out", help="Folder for the rewritten adapter.")],
    layout: Annotated[str, typer.Option("--layout", help="portable (every server) or compact (PEFT and vLLM).")] = "portable",
    rank: Annotated[
        Optional[int], typer.Option("--rank", help="Recompress to this rank (optimal truncation, as merge --method svd).")
    ] = None,
    overwrite: OverwriteOption = False,
    debug: DebugOption = False,
) -> None:
    """Rewrite one adapter so servers apply what PEFT does: rsLoRA, rank and alpha patterns folded into the
    factors, one rank for every module (e.g. an rsLoRA adapter that llama.cpp serves at 1/sqrt(r) strength)."""

    def action() -> None:
        from loramerge.merge.recipe import MergeRecipe
        from loramerge.recipes import validate_recipe

        flags = {"method": "svd" if rank is not None else "cat", "rank": rank, "layout": layout}
        recipe = validate_recipe(
            MergeRecipe, {"sources": [{"path": source}], **flags}, "arguments", {"layout": f"--layout {layout}"}
        )
        print_merge_summary(run_merge_command(recipe, out, overwrite, verb="exporting"))

    run_safely(debug, action)
