"""merge_adapters: stream modules from PEFT LoRA adapters, combine them, write one PEFT adapter.

No base model is loaded. Tensors are read one module at a time through safetensors' lazy reader.
When the output ranks are known before the work starts (cat, svd to a fixed rank, linear), each
module's factors are written to the output file as soon as they are computed, so memory holds one
module at a time; otherwise (energy targets, sparsifying methods) the outputs are collected first.
"""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from loramerge.adapters import CONFIG_FILE, WEIGHTS_FILE, LoraAdapter, hash_adapter_files
from loramerge.atomic import atomic_directory
from loramerge.errors import ProblemList
from loramerge.hub.card import MergedInput, input_card_metadata, render_merge_card
from loramerge.merge.inputs import all_finite, carry_tensors, check_finite_inputs, load_and_check, read_factors
from loramerge.merge.layer_weights import layer_index, module_weight
from loramerge.merge.layout import SERVED_BY, missing_in_layers, pad_factors, same_place_key
from loramerge.merge.lowrank import product_frobenius_norm
from loramerge.merge.methods import METHODS, Contribution, MethodSettings
from loramerge.merge.peft_config import merged_config
from loramerge.merge.recipe import MergeRecipe, MergeSource, method_settings
from loramerge.merge.report import build_report, rank_span, serving_warnings, summarise
from loramerge.merge.stream_writer import StreamingWriter, TensorSpec
from loramerge.output_lock import output_lock
from loramerge.recipes import dump_recipe

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SAFETENSORS_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}
REPORT_FILE = "merge_report.json"
RECIPE_FILE = "recipe.yaml"
CARD_FILE = "README.md"


class NonFiniteOutput(RuntimeError):
    """A merged tensor is NaN or Inf: never published (an internal error, exit 1, not a user error)."""


def rounding_error(b: torch.Tensor, a: torch.Tensor, b_written: torch.Tensor, a_written: torch.Tensor) -> float:
    """||b a - b' a'||_F / ||b a||_F of factors rounded to a smaller dtype, from R x R Gram matrices (no out x in
    matrix): bfloat16 rounds each factor by ~2^-9, so ~4e-3 of the update."""
    norm = product_frobenius_norm(b, a)
    difference = product_frobenius_norm(torch.cat([b.float(), -b_written.float()], 1), torch.cat([a.float(), a_written.float()]))
    return difference / norm if norm > 0 else 0.0


def zero_output_warning(modules: dict[str, dict[str, Any]]) -> list[str]:
    """A merge whose every module is zero changes nothing when served: legal, but never silent."""
    if modules and all(entry.get("zero") for entry in modules.values()):
        return [
            f"every one of the {len(modules)} merged modules is zero, so the adapter changes nothing: the weights "
            "(or alpha) are 0, or the inputs' updates are zero (an untrained adapter has B = 0)"
        ]
    return []


@dataclass
class MergeResult:
    out: Path
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MergedModule:
    name: str
    a_key: str
    b_key: str
    a: torch.Tensor
    b: torch.Tensor
    entry: dict[str, Any]  # rank, errors, sources and weights for merge_report.json


def natural_key(name: str) -> list[Any]:
    """model.layers.2.x sorts before model.layers.10.x."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def module_seed(seed: int, module_name: str) -> int:
    """A per-module seed that does not depend on the order modules are visited in."""
    return (seed * 1_000_003 + zlib.crc32(module_name.encode())) % (2**63)


def output_dtype(recipe: MergeRecipe, adapters: list[LoraAdapter]) -> torch.dtype:
    if recipe.dtype is not None:
        return DTYPES[recipe.dtype]
    names = {SAFETENSORS_DTYPES.get(dtype, "float32") for adapter in adapters for dtype in adapter.dtypes}
    return DTYPES[names.pop()] if len(names) == 1 else torch.float32


def planned_rank(recipe: MergeRecipe, adapters: list[LoraAdapter], name: str) -> int | None:
    """The output rank of a module when it is known before merging; None when only the work tells."""
    modules = [adapter.modules[name] for adapter in adapters if name in adapter.modules]
    total = sum(module.rank for module in modules)
    if recipe.method == "cat":
        return total
    if recipe.method == "linear":
        return modules[0].rank
    if (recipe.method == "svd" or METHODS[recipe.method].core_space) and recipe.energy is None:
        # the QR-core SVD has min(out, in, R) singular values
        available = min(modules[0].out_features, modules[0].in_features, total)
        return min(recipe.rank if recipe.rank is not None else total, available)
    return None


def merge_module(
    name: str,
    adapters: list[LoraAdapter],
    handles: list[Any],
    recipe: MergeRecipe,
    settings: MethodSettings,
    num_layers: int,
) -> MergedModule:
    contributions, indices, weights, absent = [], [], [], []
    first = next(adapter.modules[name] for adapter in adapters if name in adapter.modules)
    for index, (adapter, handle, source) in enumerate(zip(adapters, handles, recipe.sources)):
        weight = module_weight(source, name, num_layers)
        if name not in adapter.modules:
            # dW = 0 with its weight, as the README's rule says: a rank-0 contribution. It changes no sum, vote or
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
    contributions += absent
    generator = torch.Generator().manual_seed(module_seed(recipe.seed or 0, name))
    merged = METHODS[recipe.method].function(contributions, settings, generator)
    entry = {
        "rank": merged.a.shape[0],
        "retained_energy": merged.retained_energy,
        "relative_error": merged.relative_error,
        "sources": indices,
        "weights": weights,
    }
    if merged.task_retained is not None:  # per present source, in `sources` order (absent ones were appended last)
        entry["task_retained"] = [round(share, 6) for share in merged.task_retained[: len(indices)]]
    return MergedModule(name=name, a_key=first.a_key, b_key=first.b_key, a=merged.a, b=merged.b, entry=entry)


def tensor_specs(
    modules: list[tuple[str, str, str, int, int, int]], carried: dict[str, torch.Tensor], dtype: torch.dtype
) -> list[TensorSpec]:
    """(name, a_key, b_key, rank, in, out) per module, in write order, then the carried tensors."""
    specs = []
    for _, a_key, b_key, rank, in_features, out_features in modules:
        specs += [TensorSpec(a_key, dtype, (rank, in_features)), TensorSpec(b_key, dtype, (out_features, rank))]
    return specs + [TensorSpec(key, tensor.dtype, tuple(tensor.shape)) for key, tensor in carried.items()]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def portable_plan(
    plan: list[tuple[str, str, str, int, int, int]], filled: dict[str, str], rank: int
) -> list[tuple[str, str, str, int, int, int]]:
    """Every module at one rank, then the zero modules that complete each module type's layers."""
    by_name = {entry[0]: entry for entry in plan}
    padded = [(name, a_key, b_key, rank, fan_in, fan_out) for name, a_key, b_key, _, fan_in, fan_out in plan]
    for name, example in filled.items():
        _, a_key, b_key, _, fan_in, fan_out = by_name[example]
        padded.append((name, same_place_key(a_key, example, name), same_place_key(b_key, example, name), rank, fan_in, fan_out))
    return padded


def portable_outputs(
    outputs: Iterable[MergedModule], fillers: list[tuple[str, str, str, int, int, int]], rank: int
) -> Iterator[MergedModule]:
    """Each merged module padded to `rank`, then the planned zero modules (`portable_plan`'s tail)."""
    for output in outputs:
        a, b = pad_factors(output.a, output.b, rank)
        yield MergedModule(output.name, output.a_key, output.b_key, a, b, output.entry)
    for name, a_key, b_key, _, fan_in, fan_out in fillers:
        # zero factors: no update, but the module type is complete in every layer (TGI/LoRAX drop it otherwise)
        yield MergedModule(name, a_key, b_key, torch.zeros(rank, fan_in), torch.zeros(fan_out, rank), {"zero_filled": True})


def write_weights(
    path: Path,
    outputs: Iterable[MergedModule],
    plan: list[tuple[str, str, str, int, int, int]],
    carried: dict[str, torch.Tensor],
    dtype: torch.dtype,
    on_module: Callable[[str], None] | None,
) -> dict[str, dict[str, Any]]:
    entries: dict[str, dict[str, Any]] = {}
    with StreamingWriter(path, tensor_specs(plan, carried, dtype), {"format": "pt"}) as writer:
        for output in outputs:
            a, b = output.a.to(dtype).contiguous(), output.b.to(dtype).contiguous()
            if not (all_finite(a) and all_finite(b)):
                raise NonFiniteOutput(
                    f"module {output.name}: the merged factors hold NaN or Inf in {dtype} although every input was "
                    "finite; nothing was written. Weights or alpha too large for the output dtype overflow it; "
                    "otherwise this is a bug: rerun with --debug and report it"
                )
            if not output.entry.get("zero_filled"):
                output.entry["zero"] = not (bool(a.any()) and bool(b.any()))
                if dtype != torch.float32:  # the error is reported for what is written, not for the float32 result
                    output.entry["dtype_relative_error"] = rounding_error(output.b, output.a, b, a)
            writer.write(output.a_key, a)
            writer.write(output.b_key, b)
            if not output.entry.get("zero_filled"):  # the report lists merged modules only
                entries[output.name] = output.entry
            if on_module is not None:
                on_module(output.name)
        for key, tensor in carried.items():
            writer.write(key, tensor)
    return entries


def pinned(recipe: MergeRecipe, adapters: list[LoraAdapter]) -> MergeRecipe:
    """The recipe with each Hub input fixed to the commit used (org/name@sha), so a rerun reproduces it."""
    sources = [
        source.model_copy(update={"path": adapter.label}) if adapter.origin else source
        for source, adapter in zip(recipe.sources, adapters)
    ]
    return recipe.model_copy(update={"sources": sources})


def input_record(source: MergeSource, adapter: LoraAdapter) -> dict[str, Any]:
    """Provenance of one input for merge_report.json: as given, where it was read, what it hashed to."""
    return {"source": source.path, "path": str(adapter.path), **adapter.origin, "sha256": adapter.file_sha256}


def merge_adapters(
    recipe: MergeRecipe | dict[str, Any],
    out: str | Path,
    *,
    overwrite: bool = False,
    on_module: Callable[[str], None] | None = None,
    extra_files: dict[str, str] | None = None,
    card_section: str = "",
) -> MergeResult:
    """Merge the recipe's adapters into a new PEFT adapter folder at `out` (see README: merge semantics).

    extra_files (name -> text) are written beside the adapter and card_section (markdown) goes into its card,
    in the same atomic step: e.g. the table of a merge-weight search.

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
        # Factor methods work on out x R matrices with R ~ 32: threads buy nothing, and on a shared 2-core
        # machine OpenMP workers spin waiting for a busy core. Measured (Llama-3-8B shapes, svd, 2 cores
        # with another job running): 1 thread 1.5 s, 2 threads 29-95 s; idle: 1.5 s vs 1.2 s.
        threads = torch.get_num_threads() if METHODS[recipe.method].sparsifies else 1
        with atomic_directory(out) as staging, ExitStack() as stack, torch_threads(threads):
            handles = [stack.enter_context(safe_open(str(a.weights_path), framework="pt")) for a in adapters]
            # sha256 of the inputs (for the card) runs on the other core while the merge computes: hashlib
            # releases the GIL, and hashing 320 MB costs ~0.23 s, a quarter of an 8B-shaped cat merge.
            hashing = stack.enter_context(ThreadPoolExecutor(max_workers=1)).map(hash_adapter_files, adapters)
            check_finite_inputs(adapters, handles, problems)
            carried = carry_tensors(adapters, handles, problems)
            problems.raise_if_any()  # before any work: a NaN input would fail inside a method
            settings = method_settings(recipe)  # resolved once, not per module
            outputs: Iterable[MergedModule] = (merge_module(n, adapters, handles, recipe, settings, num_layers) for n in names)
            ranks = {name: planned_rank(recipe, adapters, name) for name in names}
            if any(rank is None for rank in ranks.values()):
                outputs = list(outputs)  # ranks are known only after the work: collect, then write
                ranks = {output.name: output.entry["rank"] for output in outputs}
            first = {name: next(a.modules[name] for a in adapters if name in a.modules) for name in names}
            plan = [(n, first[n].a_key, first[n].b_key, ranks[n], first[n].in_features, first[n].out_features) for n in names]
            stored_rank, filled = None, {}
            if recipe.layout == "portable":
                stored_rank = max(ranks.values())
                filled = missing_in_layers(names)
                plan = portable_plan(plan, filled, stored_rank)
                outputs = portable_outputs(outputs, plan[len(names) :], stored_rank)
            modules = write_weights(staging / WEIGHTS_FILE, outputs, plan, carried, dtype, on_module)
            list(hashing)  # re-raises a hashing error, if any
            base_model = recipe.base_model or adapters[0].base_model
            stored_ranks = {name: rank for name, _, _, rank, _, _ in plan}
            config = merged_config(adapters, stored_ranks, base_model)
            (staging / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
            report = {
                **build_report(recipe, modules),
                "layout": {
                    "name": recipe.layout,
                    "stored_rank": stored_rank,
                    "zero_filled_modules": sorted(filled, key=natural_key),
                    "served_exactly_by": SERVED_BY[recipe.layout],
                },
                "inputs": [input_record(source, a) for source, a in zip(recipe.sources, adapters)],
            }
            (staging / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
            # unset method keys stay out: the file reruns as is, and a key the method does not read would be refused
            recipe_yaml = dump_recipe(pinned(recipe, adapters), exclude_none=True)
            (staging / RECIPE_FILE).write_text(recipe_yaml, encoding="utf-8")
            inputs = [
                MergedInput(
                    path=adapter.label if adapter.origin else source.path,
                    weight=source.weight,
                    ranks=rank_span(adapter),
                    sha256=adapter.file_sha256,
                )
                for source, adapter in zip(recipe.sources, adapters)
            ]
            languages, tags = zip(*(input_card_metadata(adapter.path) for adapter in adapters))
            card = render_merge_card(
                inputs, recipe.method, summarise(report), recipe_yaml, base_model, sum(languages, []), sum(tags, []), card_section
            )
            (staging / CARD_FILE).write_text(card, encoding="utf-8")
            for name, text in (extra_files or {}).items():
                (staging / name).write_text(text, encoding="utf-8")
        warnings = zero_output_warning(modules) + serving_warnings(report, carried)
        return MergeResult(out=out, report=report, warnings=warnings)
