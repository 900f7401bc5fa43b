"""Merge-weight search: score candidate weightings of a merge on a dev set and keep the best (the paper tuned
its merge weights on dev data).

A candidate is the merge recipe with a few keys changed. Each is merged exactly into a temporary folder (cat:
a concatenation of factors, ~0.1 s at 270M scale) and loaded as one more adapter into a single copy of the
base model; the base model is never rewritten or reloaded per candidate.

The grid syntax is in search_grid.py; the tables it writes in search_report.py.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loramerge.atomic import output_dir_problem
from loramerge.data.records import TaskRecord, read_task_file
from loramerge.errors import LoramergeError, ProblemList
from loramerge.evaluate.evaluator import Evaluator
from loramerge.evaluate.metrics import UNDETERMINED
from loramerge.evaluate.run import check_supervised_in_data, parse_supervised
from loramerge.merge.engine import MergeResult, merge_adapters
from loramerge.merge.inputs import load_source
from loramerge.merge.recipe import MergeRecipe
from loramerge.merge.search_grid import Candidate, candidate_recipe, parse_grid
from loramerge.merge.search_report import SearchRow, search_json, search_markdown
from loramerge.output_lock import output_lock

__all__ = ["Candidate", "SearchRow", "SearchSettings", "parse_grid", "search_and_merge"]
OBJECTIVES = ("all", "transfer", "supervised")


def objective_value(row: SearchRow, objective: str) -> float:
    value = row.means.get(objective)
    if value is None:  # check_objective_group refuses this before any work
        raise LoramergeError(f"--search-objective {objective}: the dev set has no {objective} language")
    return value


def check_objective_group(objective: str, supervised: list[str] | None, records: list[TaskRecord], dev: Path) -> None:
    """The objective's language group must exist in the dev set before candidates are scored."""
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
    evaluator: Evaluator,
    records: list[TaskRecord],
    supervised: set[str] | None,
    on_candidate: Callable[[int, Candidate], None] | None = None,
) -> list[SearchRow]:
    recipes = [candidate_recipe(recipe, candidate) for candidate in candidates]  # all checked before any work
    rows = []
    with tempfile.TemporaryDirectory(prefix="loramerge-search-") as work:
        for index, (candidate, candidate_recipe_) in enumerate(zip(candidates, recipes)):
            if on_candidate is not None:
                on_candidate(index, candidate)
            folder = Path(work) / f"candidate-{index}"
            try:
                merge_adapters(candidate_recipe_, folder)
            except LoramergeError as exc:  # e.g. a scale that overflows: say which candidate (its recipe differs)
                raise LoramergeError(f"--search candidate {candidate.label}: {exc.one_line()}") from None
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
    strict: bool = False,
) -> tuple[MergeResult, list[SearchRow], SearchRow]:
    """Score every candidate on the dev set, then write the best merge to `out` with the table in its card. strict
    applies to that merge (a candidate that cancels is scored like any other: the dev set judges it)."""
    with output_lock(out):
        if settings.objective not in OBJECTIVES:
            raise LoramergeError(f"--search-objective {settings.objective!r}: use one of {', '.join(OBJECTIVES)}")
        if (problem := output_dir_problem(out, overwrite)) is not None:
            raise LoramergeError(problem)
        candidates = parse_grid(recipe, list(settings.specs))
        for candidate in candidates:  # a candidate's recipe refused before the base model loads (run_search redoes it)
            candidate_recipe(recipe, candidate)
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
            strict=strict,
        )
        result.warnings[:0] = identical_candidates(rows)
        return result, rows, best
