"""merge_adapters: stream modules from PEFT LoRA adapters, combine them, write one PEFT adapter.

No base model is loaded. Tensors are read one module at a time through safetensors' lazy reader.
When the output ranks are known before the work starts (the method registry's `output_rank`: cat, svd and
core space to a fixed rank, linear), each module's factors are written to the output file as soon as they are
computed, so memory holds one module at a time; otherwise (energy targets, the dense sparsifying methods) the
outputs are collected first. `plan` lays the output out, `outputs` writes it.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from loramerge.adapters import WEIGHTS_FILE, LoraAdapter, LoraModule, hash_adapter_files
from loramerge.atomic import atomic_directory
from loramerge.dtypes import DTYPES, SAFETENSORS_DTYPES
from loramerge.errors import LoramergeError, ProblemList
from loramerge.merge.cancellation import cancellation_problems, relative_norm
from loramerge.merge.inputs import carry_tensors, load_and_check, measure_inputs, read_factors
from loramerge.merge.layer_weights import layer_index, module_weight
from loramerge.merge.layout import missing_in_layers
from loramerge.merge.lowrank import Truncation, sum_norms
from loramerge.merge.methods import METHODS, Contribution, MethodSettings
from loramerge.merge.outputs import MergedModule, layout_record, portable_outputs, write_folder_files, write_weights
from loramerge.merge.parallel import ordered_map, worker_count
from loramerge.merge.plan import module_plan, natural_key, planned_rank, portable_plan
from loramerge.merge.recipe import MergeRecipe, method_settings
from loramerge.merge.scales import scale_problems
from loramerge.output_lock import output_lock

__all__ = ["MergeResult", "merge_adapters"]


@dataclass
class MergeResult:
    out: Path
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def module_seed(seed: int, module_name: str) -> int:
    """A per-module seed that does not depend on the order modules are visited in."""
    return (seed * 1_000_003 + zlib.crc32(module_name.encode())) % (2**63)


def output_dtype(recipe: MergeRecipe, adapters: list[LoraAdapter]) -> torch.dtype:
    if recipe.dtype is not None:
        return DTYPES[recipe.dtype]
    names = {SAFETENSORS_DTYPES.get(dtype, "float32") for adapter in adapters for dtype in adapter.dtypes}
    return DTYPES[names.pop()] if len(names) == 1 else torch.float32


@dataclass
class ModuleInputs:
    """One module's contributions, read from the inputs: what a method combines."""

    name: str
    first: LoraModule  # the first input's module record: keys and shapes of the output
    contributions: list[Contribution]
    indices: list[int]  # which sources are present, in recipe order
    weights: list[float]


def read_module(name: str, adapters: list[LoraAdapter], handles: list[Any], recipe: MergeRecipe, num_layers: int) -> ModuleInputs:
    contributions, indices, weights, absent = [], [], [], []
    first = next(adapter.modules[name] for adapter in adapters if name in adapter.modules)
    for index, (adapter, handle, source) in enumerate(zip(adapters, handles, recipe.sources)):
        weight = module_weight(source, name, num_layers)
        if name not in adapter.modules:
            # dW = 0 with its weight, as docs/merge.md's rule says: a rank-0 contribution. It changes no sum, vote or
            # basis, but counts in a normalised linear merge's divisor (mergekit divides by every weight). Last,
            # so the DARE masks of the present inputs are drawn as before. PEFT's `linear` needs equal ranks.
            zero = Contribution(
                a=torch.zeros(0, first.in_features), b=torch.zeros(first.out_features, 0), scale=1.0, weight=weight
            )
            absent += [] if recipe.method == "linear" else [zero]
            continue
        a, b = read_factors(handle, adapter, name)
        contributions.append(Contribution(a=a, b=b, scale=adapter.modules[name].scale, weight=weight))
        indices.append(index)
        weights.append(weight)
    return ModuleInputs(name, first, contributions + absent, indices, weights)


def combine_module(inputs: ModuleInputs, recipe: MergeRecipe, settings: MethodSettings) -> MergedModule:
    generator = torch.Generator().manual_seed(module_seed(recipe.seed or 0, inputs.name))
    merged = METHODS[recipe.method].function(inputs.contributions, settings, generator)
    norm, input_norms = module_norms(inputs, merged, METHODS[recipe.method].exact)
    entry = {
        "rank": merged.a.shape[0],
        "retained_energy": merged.retained_energy,
        "relative_error": merged.relative_error,
        "sources": inputs.indices,
        "weights": inputs.weights,
        "norm": norm,
        "input_norms": input_norms,
        "relative_norm": relative_norm(norm, input_norms),
    }
    if merged.task_retained is not None:  # per present source, in `sources` order (absent ones were appended last)
        entry["task_retained"] = [round(share, 6) for share in merged.task_retained[: len(inputs.indices)]]
    first = inputs.first
    return MergedModule(name=inputs.name, a_key=first.a_key, b_key=first.b_key, a=merged.a, b=merged.b, entry=entry)


def module_norms(inputs: ModuleInputs, merged: Truncation, exact: bool) -> tuple[float, list[float]]:
    """||output||_F and each present input's own ||s_i B_i A_i||_F (as the adapter applies it alone, weight aside),
    from R x R Gram blocks. The output's is the kept singular values' where the method has them (svd, core space,
    the dense methods), else the weighted sum's for the exact method (cat: one set of blocks gives both, ~3 ms a
    Llama-3-8B layer for two r=16 inputs, one thread), else its factors' (linear)."""
    present = inputs.contributions[: len(inputs.indices)]
    whole, products = sum_norms([(c.b, c.a, c.weight * c.scale) for c in present], whole=merged.norm is None and exact)
    input_norms = [abs(c.scale) * norm for c, norm in zip(present, products)]
    if merged.norm is not None:
        return merged.norm, input_norms
    return (whole if exact else sum_norms([(merged.b, merged.a, 1.0)])[0]), input_norms


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def merge_adapters(
    recipe: MergeRecipe | dict[str, Any],
    out: str | Path,
    *,
    overwrite: bool = False,
    on_module: Callable[[str], None] | None = None,
    extra_files: dict[str, str] | None = None,
    card_section: str = "",
    strict: bool = False,
) -> MergeResult:
    """Merge the recipe's adapters into a new PEFT adapter folder at `out` (docs/merge.md, Usage and semantics).

    extra_files (name -> text) are written beside the adapter and card_section (markdown) goes into its card,
    in the same atomic step: e.g. the table of a merge-weight search. With strict, a merge that cancels (the
    cancellation warning) is refused instead of written.

    Raises LoramergeError listing every problem in the inputs; nothing is written then.
    """
    with output_lock(Path(out)):
        recipe = recipe if isinstance(recipe, MergeRecipe) else MergeRecipe.model_validate(recipe)
        out = Path(out)
        adapters = load_and_check(recipe, out, overwrite)
        names = sorted({name for adapter in adapters for name in adapter.modules}, key=natural_key)
        layers = [layer for name in names if (layer := layer_index(name)) is not None]
        num_layers = recipe.num_layers or (max(layers) + 1 if layers else 1)
        dtype = output_dtype(recipe, adapters)
        problems = ProblemList()
        # Dense methods use torch's threads inside each module; factor methods run modules side by side on
        # one-thread workers (merge/parallel.py says why).
        dense = METHODS[recipe.method].sparsifies
        threads, workers = (torch.get_num_threads(), 1) if dense else (1, worker_count())
        with atomic_directory(out) as staging, ExitStack() as stack, torch_threads(threads):
            handles = [stack.enter_context(safe_open(str(a.weights_path), framework="pt")) for a in adapters]
            # sha256 of the inputs (for the card) runs on the other core while the merge computes: hashlib
            # releases the GIL, and hashing 320 MB costs ~0.23 s, a quarter of an 8B-shaped cat merge.
            hashing = stack.enter_context(ThreadPoolExecutor(max_workers=1)).map(hash_adapter_files, adapters)
            measured = measure_inputs(adapters, handles, problems)
            carried = carry_tensors(adapters, handles, problems)
            problems.raise_if_any()  # before any work: a NaN input would fail inside a method
            settings = method_settings(recipe)  # resolved once, not per module
            if overflows := scale_problems(recipe, adapters, names, measured, settings, dtype, num_layers):
                raise LoramergeError(overflows)  # before any work: the update would not fit float32 or the output dtype
            inputs = (read_module(name, adapters, handles, recipe, num_layers) for name in names)
            outputs: Iterable[MergedModule] = ordered_map(
                partial(combine_module, recipe=recipe, settings=settings), inputs, workers
            )
            ranks = {name: planned_rank(recipe, adapters, name) for name in names}
            if any(rank is None for rank in ranks.values()):
                outputs = list(outputs)  # ranks are known only after the work: collect, then write
                ranks = {output.name: output.entry["rank"] for output in outputs}
            plan = module_plan(adapters, names, ranks)
            stored_rank, filled = None, {}
            if recipe.layout == "portable":
                stored_rank = max(ranks.values())
                filled = missing_in_layers(names)
                plan = portable_plan(plan, filled, stored_rank)
                outputs = portable_outputs(outputs, plan[len(names) :], stored_rank)
            modules = write_weights(staging / WEIGHTS_FILE, outputs, plan, carried, dtype, on_module)
            list(hashing)  # re-raises a hashing error, if any
            layout = layout_record(recipe, stored_rank, filled)
            report = write_folder_files(staging, recipe, adapters, modules, plan, layout, carried, card_section, extra_files)
            if strict:  # before the output is published: nothing is written
                refuse_cancelled(report)
        return MergeResult(out=out, report=report, warnings=list(report["warnings"]))  # a copy: a search prepends its own


def refuse_cancelled(report: dict[str, Any]) -> None:
    """strict (--strict): a merge that cancels is an error, not a warning."""
    problems = cancellation_problems(report["cancellation"], report["modules_merged"])
    if problems:
        raise LoramergeError(f"{problems[0]}; refused by --strict, so nothing was written")
