"""Merge-weight search: score candidate weightings of a merge on a dev set and keep the best (the paper tuned
its merge weights on dev data).

A candidate is the merge recipe with a few keys changed. Each is merged exactly into a temporary folder (cat:
a concatenation of factors, ~0.1 s at 270M scale) and loaded as one more adapter into a single copy of the
base model; the base model is never rewritten or reloaded per candidate.

Grid syntax (--search, repeatable; several inline specs form their cartesian product):
  NAME=0,0.25,0.5      the weight of source NAME (its folder name, or its 1-based position) takes each value
  NAME@LAYERS=0,1      a rule for that source on a layer range ('0-4', '9-'), e.g. per-layer variants
  grid.yaml            a file with `candidates:`, a list of {dotted.recipe.key: value} mappings
  methods              the default grid of methods and scales (method_grid.py): chooses the method too
"""

from __future__ import annotations

import hashlib
import itertools
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from loramerge.errors import LoramergeError
from loramerge.merge.method_grid import METHODS_SPEC, method_candidates
from loramerge.merge.recipe import MergeRecipe
from loramerge.output_lock import output_lock
from loramerge.parsing import parse_float_list
from loramerge.recipes import set_path, validate_recipe

OBJECTIVES = ("all", "transfer", "supervised")


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


@dataclass
class SearchRow:
    candidate: Candidate
    recipe: MergeRecipe
    means: dict[str, float | None]  # supervised / transfer / all (percent)
    languages: dict[str, float]
    weights_sha256: str = ""  # of the candidate's merged tensors: equal hashes are equal merges


def objective_value(row: SearchRow, objective: str) -> float:
    value = row.means.get(objective)
    if value is None:  # check_objective_group refuses this before any work
        raise LoramergeError(f"--search-objective {objective}: the dev set has no {objective} language")
    return value


def check_objective_group(objective: str, supervised: list[str] | None, records: list[Any], dev: Path) -> None:
    """The objective's language group must exist in the dev set before candidates are scored."""
    from loramerge.evaluate.metrics import UNDETERMINED
    from loramerge.evaluate.run import check_supervised_in_data

    if objective != "all" and supervised is None:
        raise LoramergeError(f"--search-objective {objective} needs --supervised to know the language groups")
    check_supervised_in_data(supervised, records, dev)  # --supervised de against a dev set in en and fr
    present = {record.lang or UNDETERMINED for record in records}
    if objective == "transfer" and not present - set(supervised or []):
        raise LoramergeError(
            f"--search-objective transfer: every language of {dev} ({', '.join(sorted(present))}) is in --supervised, "
            "so there is no transfer language to score; add dev records in other languages or use --search-objective all"
        )


def identical_candidates(rows: list[SearchRow]) -> list[str]:
    """Candidates whose merges are equal tensor for tensor: their scores differ only by nothing (a rule for layers
    or modules the adapters do not have changes nothing). Said, not scored in silence."""
    seen: dict[str, str] = {}
    warnings = []
    for row in rows:
        first = seen.setdefault(row.weights_sha256, row.candidate.label)
        if first != row.candidate.label:
            warnings.append(
                f"--search candidates {first!r} and {row.candidate.label!r} give the same merge: a change that matches "
                "no layer or module of the adapters does nothing; check the layer range or the key"
            )
    return warnings


def run_search(
    recipe: MergeRecipe,
    candidates: list[Candidate],
    evaluator: Any,  # loramerge.evaluate.evaluator.Evaluator (imported lazily: it pulls in transformers)
    records: list[Any],
    supervised: set[str] | None,
    on_candidate: Callable[[int, Candidate], None] | None = None,
) -> list[SearchRow]:
    from loramerge.merge.engine import merge_adapters

    recipes = [candidate_recipe(recipe, candidate) for candidate in candidates]  # all checked before any work
    rows = []
    with tempfile.TemporaryDirectory(prefix="loramerge-search-") as work:
        for index, (candidate, candidate_recipe_) in enumerate(zip(candidates, recipes)):
            if on_candidate is not None:
                on_candidate(index, candidate)
            folder = Path(work) / f"candidate-{index}"
            merge_adapters(candidate_recipe_, folder)
            digest = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
            evaluator.add_adapter(f"candidate-{index}", folder)
            scores = evaluator.evaluate(f"candidate-{index}", records)
            evaluator.remove_adapter(f"candidate-{index}")
            languages = {lang: round(score.score, 2) for lang, score in scores.languages.items()}
            rows.append(SearchRow(candidate, candidate_recipe_, scores.group_means(supervised), languages, digest))
    return rows


def best_row(rows: list[SearchRow], objective: str) -> SearchRow:
    """The highest objective; ties go to the earlier candidate (the grid's order is the user's preference)."""
    return max(rows, key=lambda row: (objective_value(row, objective), -rows.index(row)))


def search_markdown(rows: list[SearchRow], best: SearchRow, objective: str, dev: str, metric: str) -> str:
    languages = sorted({lang for row in rows for lang in row.languages})
    header = ["candidate", "supervised", "transfer", "all", *languages]
    lines = [
        "## Merge-weight search",
        "",
        f"Candidates scored on `{dev}` ({metric}, percent, macro means over languages); chosen by the `{objective}` mean.",
        "",
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
    ]
    for row in rows:
        marker = " **(chosen)**" if row is best else ""
        means = [row.means.get(key) for key in ("supervised", "transfer", "all")]
        cells = ["-" if v is None else f"{v:.1f}" for v in means] + [f"{row.languages.get(lang, 0):.1f}" for lang in languages]
        lines.append(f"| {row.candidate.label}{marker} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def search_json(rows: list[SearchRow], best: SearchRow, objective: str, dev: str, metric: str) -> dict[str, Any]:
    return {
        "dev": dev,
        "metric": metric,
        "objective": objective,
        "chosen": best.candidate.label,
        "candidates": [
            {
                "label": row.candidate.label,
                "changes": {key: value for key, value in row.candidate.changes.items() if value is not None},
                "means": row.means,
                "languages": row.languages,
            }
            for row in rows
        ],
    }


@dataclass(frozen=True)
class SearchSettings:
    specs: tuple[str, ...]
    dev: Path
    model: str | None = None  # default: the base model the adapters record
    supervised: str | None = None  # comma-separated languages
    objective: str = "all"
    metric: str = "exact"
    max_new_tokens: int = 32
    batch_size: int = 16


def base_model_of(recipe: MergeRecipe) -> str:
    from loramerge.errors import ProblemList
    from loramerge.merge.inputs import load_source

    problems = ProblemList()
    adapter = load_source(recipe.sources[0].path, problems)
    problems.raise_if_any()
    if adapter is None or not adapter.base_model:
        raise LoramergeError("the adapters record no base model; pass --model for the dev-set evaluation")
    return adapter.base_model


def search_and_merge(
    recipe: MergeRecipe,
    settings: SearchSettings,
    out: Path,
    overwrite: bool,
    on_candidate: Callable[[int, Candidate], None] | None = None,
) -> tuple[Any, list[SearchRow], SearchRow]:
    """Score every candidate on the dev set, then write the best merge to `out` with the table in its card."""
    import json

    from loramerge.atomic import output_dir_problem
    from loramerge.data.records import read_task_file
    from loramerge.evaluate.evaluator import Evaluator
    from loramerge.evaluate.run import parse_supervised
    from loramerge.merge.engine import merge_adapters

    with output_lock(out):
        if settings.objective not in OBJECTIVES:
            raise LoramergeError(f"--search-objective {settings.objective!r}: use one of {', '.join(OBJECTIVES)}")
        if (problem := output_dir_problem(out, overwrite)) is not None:
            raise LoramergeError(problem)
        candidates = parse_grid(recipe, list(settings.specs))
        supervised = parse_supervised(settings.supervised)
        records = read_task_file(settings.dev)
        check_objective_group(settings.objective, supervised, records, settings.dev)
        evaluator = Evaluator(
            settings.model or base_model_of(recipe), settings.metric, settings.batch_size, settings.max_new_tokens
        )
        rows = run_search(recipe, candidates, evaluator, records, set(supervised) if supervised else None, on_candidate)
        best = best_row(rows, settings.objective)
        table = search_markdown(rows, best, settings.objective, str(settings.dev), settings.metric)
        summary = search_json(rows, best, settings.objective, str(settings.dev), settings.metric)
        result = merge_adapters(
            best.recipe,
            out,
            overwrite=overwrite,
            extra_files={"search.json": json.dumps(summary, indent=2) + "\n", "search.md": table},
            card_section=table,
        )
        result.warnings[:0] = identical_candidates(rows)
        return result, rows, best
