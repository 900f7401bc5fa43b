"""The candidates of a merge-weight search: a candidate is the merge recipe with a few keys changed.

Grid syntax (--search, repeatable; several inline specs form their cartesian product):
  NAME=0,0.25,0.5      the weight of source NAME (its folder name, or its 1-based position) takes each value
  NAME@LAYERS=0,1      a rule for that source on a layer range ('0-4', '9-'), e.g. per-layer variants
  grid.yaml            a file with `candidates:`, a list of {dotted.recipe.key: value} mappings
  methods              the default grid of methods and scales (method_grid.py): chooses the method too
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loramerge.errors import LoramergeError
from loramerge.merge.method_grid import METHODS_SPEC, method_candidates
from loramerge.merge.recipe import MergeRecipe
from loramerge.parsing import parse_float_list
from loramerge.recipes import set_path, validate_recipe


@dataclass(frozen=True)
class Candidate:
    label: str
    changes: dict[str, Any]  # dotted recipe key -> value


def source_index(recipe: MergeRecipe, name: str, spec: str) -> int:
    if name.isdigit() and 1 <= int(name) <= len(recipe.sources):
        return int(name) - 1
    matches = [i for i, source in enumerate(recipe.sources) if Path(source.path).name == name or source.path == name]
    if len(matches) != 1:
        names = ", ".join(Path(source.path).name for source in recipe.sources)
        why = "matches several sources" if matches else "is not a source"
        raise LoramergeError(f"--search {spec!r}: {name!r} {why}; name a source by folder ({names}) or 1-based position")
    return matches[0]


def inline_axis(recipe: MergeRecipe, spec: str) -> list[Candidate]:
    """'align=0,0.5' or 'align@0-4=0,1' -> one single-change candidate per value."""
    target, separator, values = spec.partition("=")
    if not separator or not target or not values:
        raise LoramergeError(f"--search {spec!r}: expected NAME=v1,v2,... or NAME@LAYERS=v1,v2,... or a grid .yaml file")
    name, _, layers = target.partition("@")
    index = source_index(recipe, name, spec)
    try:
        weights = parse_float_list(values, "--search", example=f"{target}=0,0.5,1")
    except LoramergeError as exc:
        raise LoramergeError(str(exc).replace(f"--search {values!r}", f"--search {spec!r}", 1)) from None
    if not layers:
        return [Candidate(f"{name}={w:g}", {f"sources.{index}.weight": w}) for w in weights]
    rules = [rule.model_dump(exclude_none=True) for rule in recipe.sources[index].rules]
    return [
        Candidate(f"{name}@{layers}={w:g}", {f"sources.{index}.rules": [*rules, {"layers": layers, "weight": w}]})
        for w in weights
    ]


def grid_file(path: Path) -> list[Candidate]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LoramergeError(f"--search {path}: cannot read the grid file ({exc})") from exc
    unknown = sorted(set(data) - {"candidates"}) if isinstance(data, dict) else []
    if unknown:
        raise LoramergeError(
            f"--search {path}: unknown top-level key(s) {', '.join(map(str, unknown))}; a grid file has only 'candidates:'"
        )
    rows = data.get("candidates") if isinstance(data, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(row, dict) for row in rows):
        raise LoramergeError(f"--search {path}: expected 'candidates:' with a list of {{recipe.key: value}} mappings")
    return [Candidate(", ".join(f"{k}={v}" for k, v in row.items()) or "recipe as is", dict(row)) for row in rows]


def parse_grid(recipe: MergeRecipe, specs: list[str]) -> list[Candidate]:
    if METHODS_SPEC in specs:
        if len(specs) > 1:
            raise LoramergeError(f"--search {METHODS_SPEC} is a whole grid of methods and scales; give it alone")
        return [Candidate(label, changes) for label, changes in method_candidates(recipe)]
    files = [spec for spec in specs if spec.endswith((".yaml", ".yml"))]
    if files and len(specs) > 1:
        raise LoramergeError("--search: give one grid .yaml file, or inline NAME=values specs, not both")
    if files:
        return grid_file(Path(files[0]))
    axes = [inline_axis(recipe, spec) for spec in specs]
    return [
        Candidate(", ".join(c.label for c in combo), {k: v for c in combo for k, v in c.changes.items()})
        for combo in itertools.product(*axes)
    ]


def candidate_recipe(recipe: MergeRecipe, candidate: Candidate) -> MergeRecipe:
    data = recipe.model_dump(mode="json")
    for key, value in candidate.changes.items():
        set_path(data, key, value, f"--search {candidate.label}")
    return validate_recipe(MergeRecipe, data, f"--search candidate {candidate.label}")
