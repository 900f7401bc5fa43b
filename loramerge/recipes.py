"""Recipes: YAML files validated by strict pydantic schemas, with `--set a.b=v` overrides and flags.

Precedence, lowest first: the recipe file, then `--set` overrides, then explicit command-line flags.
Everything is validated together, and every problem is reported at once.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from loramerge.errors import LoramergeError

Schema = TypeVar("Schema", bound=BaseModel)


class StrictModel(BaseModel):
    """Unknown keys are errors: a typo in a recipe must not be silently ignored. NaN and infinity are refused in
    every number (a NaN weight gave NaN tensors with exit 0; temperature=inf a constant loss and an adapter of zeros)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


EXTENDS_KEY = "extends"  # a recipe may start from another (path relative to itself) and change a few keys


def deep_merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    merged = dict(base)
    for key, value in changes.items():
        merged[key] = deep_merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def read_recipe_file(path: Path, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    if not path.is_file():
        origin = f" (extended by {chain[-1]})" if chain else ""
        raise LoramergeError(f"{path}: recipe file not found{origin}; check the path")
    if path.resolve() in chain:
        raise LoramergeError(f"{path}: recipes extend each other in a cycle: {' -> '.join(map(str, chain))}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f":{where.line + 1}" if where is not None else ""
        raise LoramergeError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise LoramergeError(f"{path}: a recipe must be a YAML mapping of keys to values, got {type(data).__name__}")
    parent = data.pop(EXTENDS_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise LoramergeError(f"{path}: '{EXTENDS_KEY}' must be a path to another recipe, got {parent!r}")
    return deep_merge(read_recipe_file(path.parent / parent, (*chain, path.resolve())), data)


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `a.b.0.c=value` override in place; the value is parsed as YAML (so 0.5 is a number)."""
    if "=" not in assignment:
        raise LoramergeError(f"--set {assignment!r}: expected KEY=VALUE, for example --set method=svd")
    dotted, raw_value = assignment.split("=", 1)
    try:
        value = yaml.safe_load(raw_value)
    except yaml.YAMLError:
        value = raw_value
    set_path(data, dotted, value, f"--set {dotted}")


def set_path(data: dict[str, Any], dotted: str, value: Any, origin: str) -> None:
    """data['a']['b'][0]['c'] = value for 'a.b.0.c', creating sections as needed."""
    parts = [part for part in dotted.strip().split(".") if part]
    if not parts:
        raise LoramergeError(f"{origin}: empty key; expected KEY=VALUE")
    container: Any = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(container, list):
            if not part.isdigit() or int(part) >= len(container):
                raise LoramergeError(f"{origin}: {part!r} is not an index of a list of {len(container)} items")
            key: Any = int(part)
        elif isinstance(container, dict):
            key = part
            if not last and not isinstance(container.get(key), (dict, list)):
                container[key] = {}
        else:
            raise LoramergeError(f"{origin}: {'.'.join(parts[:depth])} is a value, not a section")
        if last:
            container[key] = value
        else:
            container = container[key]


def format_validation_error(exc: ValidationError, origin: str, given_by: dict[str, str] | None = None) -> list[str]:
    """One line per problem, blaming what gave the key: the recipe file, or the --set or flag that set it."""
    problems = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"]) or "(top level)"
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against the recipe keys in docs/training.md or docs/merge.md"
        elif error["type"] == "finite_number":
            message = f"must be a finite number, got {error['input']!r}"
        elif error["type"] == "value_error":  # our own validators' text, without pydantic's 'Value error, ' prefix
            message = str(error.get("ctx", {}).get("error", message))
        source = (given_by or {}).get(location)
        if source:
            problems.append(f"{source}: {message}")
        else:  # a check of the whole recipe has no key to name
            problems.append(f"{origin}: {message}" if location == "(top level)" else f"{origin}: {location}: {message}")
    return problems


def recipe_data(path: Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """The recipe file's mapping (empty without a file) with `--set` overrides applied."""
    data = read_recipe_file(path) if path is not None else {}
    for assignment in overrides or []:
        apply_override(data, assignment)
    return data


def validate_recipe(schema: type[Schema], data: dict[str, Any], origin: str, given_by: dict[str, str] | None = None) -> Schema:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise LoramergeError(format_validation_error(exc, origin, given_by)) from exc


def override_origins(overrides: list[str] | None, flags: dict[str, Any] | None = None) -> dict[str, str]:
    """dotted key -> the command-line text that set it, so an error names the flag, not the recipe file."""
    origins = {}
    for assignment in overrides or []:
        dotted = assignment.split("=", 1)[0].strip()
        origins[".".join(part for part in dotted.split(".") if part)] = f"--set {assignment}"
    for dotted, value in (flags or {}).items():
        if value is not None:
            origins[dotted] = f"--{dotted.replace('_', '-').rsplit('.', 1)[-1]} {value}"
    return origins


def load_recipe(
    schema: type[Schema],
    path: Path | None = None,
    overrides: list[str] | None = None,
    flags: dict[str, Any] | None = None,
) -> Schema:
    """Recipe file < --set overrides < flags ({dotted key: value}; None means 'not given'), validated by `schema`."""
    data = recipe_data(path, overrides)
    for dotted, value in (flags or {}).items():
        if value is not None:
            set_path(data, dotted, value, f"flag {dotted}")
    origin = str(path) if path is not None else "arguments"
    return validate_recipe(schema, data, origin, override_origins(overrides, flags))


def dump_recipe(recipe: BaseModel, exclude_none: bool = False) -> str:
    """The resolved recipe as YAML, to write next to every output; exclude_none leaves out unset optional keys."""
    return yaml.safe_dump(recipe.model_dump(mode="json", exclude_none=exclude_none), sort_keys=False, allow_unicode=True)


SHIPPED_RECIPES = "loramerge.shipped_recipes"  # the repository's recipes/ folder, carried in the wheel


def shipped_recipe(group: str, name: str) -> Path:
    """recipes/GROUP/NAME.yaml as installed with the package (a wheel or a checkout, editable or not)."""
    path = Path(str(files(SHIPPED_RECIPES))) / group / f"{name}.yaml"
    if not path.is_file():
        raise LoramergeError(f"{path}: the shipped recipe {group}/{name}.yaml is missing; reinstall loramerge")
    return path
