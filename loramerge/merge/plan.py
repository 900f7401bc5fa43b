"""The merge plan: which modules the output holds, in which order, at which rank and shape, before any tensor
is computed, so the streamed writer can lay out the safetensors header first (stream_writer.py)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from loramerge.adapters import LoraAdapter
from loramerge.merge.layout import same_place_key
from loramerge.merge.methods import METHODS
from loramerge.merge.recipe import MergeRecipe


@dataclass(frozen=True)
class ModulePlan:
    """One output module: its tensor names, stored rank and shape (A is rank x in_features, B out_features x rank)."""

    name: str
    a_key: str
    b_key: str
    rank: int
    in_features: int
    out_features: int


def natural_key(name: str) -> list[Any]:
    """model.layers.2.x sorts before model.layers.10.x."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def planned_rank(recipe: MergeRecipe, adapters: list[LoraAdapter], name: str) -> int | None:
    """The output rank of a module when the method's registry entry says it is known before merging; None when
    only the work tells (an energy target, or the dense methods' recompression)."""
    modules = [adapter.modules[name] for adapter in adapters if name in adapter.modules]
    total = sum(module.rank for module in modules)
    rule = METHODS[recipe.method].output_rank
    if rule == "sum":
        return total
    if rule == "first":
        return modules[0].rank
    if rule == "target" and recipe.energy is None:
        # the core-space SVD has min(out, in, R) singular values
        available = min(modules[0].out_features, modules[0].in_features, total)
        return min(recipe.rank if recipe.rank is not None else total, available)
    return None


def module_plan(adapters: list[LoraAdapter], names: list[str], ranks: dict[str, int]) -> list[ModulePlan]:
    """Each module at its rank, with the tensor names and shape of the first adapter that has it."""
    plans = []
    for name in names:
        first = next(adapter.modules[name] for adapter in adapters if name in adapter.modules)
        plans.append(ModulePlan(name, first.a_key, first.b_key, ranks[name], first.in_features, first.out_features))
    return plans


def portable_plan(plan: list[ModulePlan], filled: dict[str, str], rank: int) -> list[ModulePlan]:
    """Every module at one rank, then the zero modules that complete each module type's layers (filled maps a
    missing module to the module whose keys and shape it copies)."""
    by_name = {entry.name: entry for entry in plan}
    padded = [replace(entry, rank=rank) for entry in plan]
    for name, example in filled.items():
        model = by_name[example]
        a_key, b_key = same_place_key(model.a_key, example, name), same_place_key(model.b_key, example, name)
        padded.append(replace(model, name=name, a_key=a_key, b_key=b_key, rank=rank))
    return padded
