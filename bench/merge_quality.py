"""Merge quality on real adapters: three task adapters (the iso-codes task split by entity kind: country,
language, currency), each trained on bundled Gemma-3-270M, merged by cat, ties, tsv, iso_c and iso_cts with
every method's documented defaults and weight 1 each, scored per task with `loramerge eval`.

    .venv/bin/python bench/merge_quality.py [--seeds 0,1,2] [--out bench/out/merge-quality] [--quick]
    .venv/bin/python bench/merge_quality.py --chosen --seeds 0,1      # every method at its scale chosen on dev
    .venv/bin/python bench/merge_quality.py --chosen --with-align --seeds 0,1   # the same, 4 sources: + alignment
    .venv/bin/python bench/merge_quality.py --chosen --dev-all --seeds 0,1,2   # chosen on dev's six languages (342)
    .venv/bin/python bench/merge_quality.py --dev-ties 0.7,0.8,0.9,1 --seeds 0,1   # dev only: ties' densities
    .venv/bin/python bench/merge_quality.py --dev-grid bench/grids/source-weights.yaml --seeds 0,1   # dev only: a grid
    .venv/bin/python bench/merge_quality.py --dev-answers bench/grids/answer-formats.yaml --seeds 0,1   # dev: formats
    .venv/bin/python bench/merge_quality.py --union bench/grids/shared-low-rank.yaml --dev-all --seeds 0,1,2   # test once

Protocol (defaults): nothing is chosen, so there is no dev selection and the test split is read once.
Protocol (--chosen, issue 23): per seed, `merge --search methods`'s default grid (method_grid.py: cat x 1/3, 0.5,
1; ties at density 0.3/0.5/0.7/1; tsv, iso_c, iso_cts at alpha 1/3, 0.5, 1) is scored on the DEV split (en + fr,
or with --dev-all all six languages: 114 items cannot rank candidates a dev item apart),
the three kinds, objective: the mean over kinds); each method keeps its best candidate, and the grid's overall
winner is what `merge --search methods` would write. At rank 16 the same for `svd` (the sum's best rank-16 form)
and for the core-space methods at their full-rank dev-chosen alpha, merge-then-truncate (subspace merged) beside
Compress-then-Merge (subspace shared); at rank 8 the best core method both ways. Then TEST is read once.
Items: every test entity of a kind, in the training languages en and fr (the adapters learn one kind each;
cross-lingual transfer is not what this measures). Each task adapter alone on its own kind is the ceiling a
merge can approach; "kept" is a method's score over that ceiling. Per method and task: the mean over seeds and
items with a two-level (seed x item) percentile bootstrap interval, and the paired difference to cat.
Resumable: adapters and evaluations already in --out are reused. Writes OUT/merge_quality.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from common import interval_cell, paired_intervals, prediction_rows, train_demo_variant
from iso_demo import FULL, QUICK, build_data
from rich.console import Console

from loramerge.cli.support import quiet_libraries
from loramerge.demo.plan import DemoPlan
from loramerge.demo.run import working_directory
from loramerge.evaluate.confidence import bootstrap_interval, paired_scores
from loramerge.merge.method_grid import method_candidates
from loramerge.merge.recipe import MergeRecipe
from loramerge.recipes import set_path, validate_recipe

KINDS = ("country", "language", "currency")
METHODS = ("cat", "ties", "tsv", "iso_c", "iso_cts")
LANGUAGES = ("en", "fr")


def split_by_kind(source: Path, folder: Path, languages: tuple[str, ...] | None) -> dict[str, Path]:
    """One JSONL per entity kind (the id's prefix, e.g. 'country:AD'), optionally only some languages.

    The prompt names the kind ('Country: Andorra' instead of 'Name: Andorra'): each adapter learns one task,
    and a merged model can tell the tasks apart. With the shared 'Name:' prompt (first run, seed 0) every
    adapter learns to always answer with its own JSON key, and every merge scored 0 on two of the three kinds:
    a conflict no merge method can resolve, not a difference between methods.
    """
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for kind in KINDS:
        chosen = [
            {**r, "prompt": r["prompt"].replace("Name: ", f"{kind.capitalize()}: ", 1)}
            for r in records
            if r["id"].split(":")[0] == kind and (languages is None or r["lang"] in languages)
        ]
        paths[kind] = folder / f"{kind}.jsonl"
        paths[kind].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), encoding="utf-8")
    return paths


def train_kind(kind: str, data: Path, plan: DemoPlan, seed: int) -> Path:
    return train_demo_variant(Path(f"seed{seed}/task-{kind}"), "task", "task", plan, {"data": str(data)}, [f"seed={seed}"])


def merge_all(adapters: list[Path], seed: int) -> dict[str, Path]:
    from loramerge.merge.engine import merge_adapters

    outputs = {}
    for method in METHODS:
        outputs[method] = Path(f"seed{seed}/merged-{method}")
        if not (outputs[method] / "adapter_model.safetensors").is_file():
            recipe = {"sources": [{"path": str(path)} for path in adapters], "method": method}
            merge_adapters(recipe, outputs[method], overwrite=True)
    return outputs


def evaluate(names: dict[str, Path], test: Path, plan: DemoPlan, seed: int, console: Console) -> dict[str, dict[int, float]]:
    """adapter name -> test line -> item score."""
    rows = prediction_rows(plan, test, Path(f"seed{seed}/eval"), {name: str(path) for name, path in names.items()}, console)
    return {name: {row["line"]: float(row["score"]) for row in found} for name, found in rows.items()}


def compare(per_seed: list[dict[str, dict[int, float]]], kinds_of_lines: dict[int, str]) -> dict[str, Any]:
    """Per task: each method's and the task's own adapter's mean [interval], and method - cat paired."""
    result: dict[str, Any] = {}
    for kind in KINDS:
        items = sorted(line for line, found in kinds_of_lines.items() if found == kind)
        result[kind] = paired_intervals(per_seed, items, [f"task-{kind}", *METHODS], "cat", list(METHODS[1:]))
    return result


def tables(comparison: dict[str, Any]) -> str:
    lines = [
        "| task | items / seed | own adapter alone | " + " | ".join(METHODS) + " |",
        "|---|---:|---:|" + "---:|" * len(METHODS),
    ]
    for kind, entry in comparison.items():
        row = [kind, str(entry["items"]), interval_cell(entry[f"task-{kind}"]), *(interval_cell(entry[m]) for m in METHODS)]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "| task | " + " | ".join(f"{m} - cat" for m in METHODS[1:]) + " |", "|---|" + "---:|" * (len(METHODS) - 1)]
    for kind, entry in comparison.items():
        lines.append("| " + " | ".join([kind, *(interval_cell(entry[f"{m} - cat"], signed=True) for m in METHODS[1:])]) + " |")
    return "\n".join(lines)


CORE = ("tsv", "iso_c", "iso_cts")  # the core-space methods, the ones `subspace: shared` applies to
RANKS = (16, 8)


def family(label: str) -> str:
    """'cat x0.333' -> 'cat', 'ties density=0.3' -> 'ties': a grid candidate's method."""
    return label.split()[0]


def by_kind_records(paths: dict[str, Path], out: Path) -> list[Any]:
    """Every kind's items with `lang` set to the kind, so that a search's "all" objective is the mean over the
    three tasks (macro over kinds) and its per-language table is a per-task one."""
    from loramerge.data.records import read_task_file

    rows = [
        {**json.loads(line), "lang": kind}
        for kind, path in paths.items()
        for line in path.read_text(encoding="utf-8").splitlines()
    ]
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return read_task_file(out)


def dev_search(
    adapters: list[Path], rank: int | None, pairs: list[tuple[str, dict[str, Any]]], evaluator: Any, dev: list[Any], out: Path
) -> list[dict[str, Any]]:
    """Score the candidates (label, recipe changes) on dev; cached in out."""
    from loramerge.merge.search import run_search
    from loramerge.merge.search_grid import Candidate

    if out.is_file():
        return json.loads(out.read_text())
    rows = run_search(grid_recipe(adapters, rank), [Candidate(label, changes) for label, changes in pairs], evaluator, dev, None)
    found = [
        {"label": row.candidate.label, "changes": row.candidate.changes, "dev": row.means["all"], "kinds": row.languages}
        for row in rows
    ]
    out.write_text(json.dumps(found, indent=1) + "\n")
    return found


def grid_base(adapters: list[Path], rank: int | None) -> dict[str, Any]:
    return {"sources": [{"path": str(path)} for path in adapters], "method": "svd" if rank else "cat", "rank": rank}


def grid_recipe(adapters: list[Path], rank: int | None) -> MergeRecipe:
    return validate_recipe(MergeRecipe, grid_base(adapters, rank), "merge_quality grid")


def dev_winner(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The best dev row; a tie keeps the earlier, as `merge --search` does."""
    return max(rows, key=lambda row: (row["dev"], -rows.index(row)))


def best_per_method(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each method's best dev candidate (ties go to the earlier, as in `merge --search`)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        name = family(row["label"])
        if name not in best or row["dev"] > best[name]["dev"]:
            best[name] = row
    return best


def merge_candidate(adapters: list[Path], rank: int | None, changes: dict[str, Any], out: Path) -> dict[str, Any]:
    """Merge one chosen candidate into out (reused); returns each task's mean retained share, where reported."""
    from loramerge.merge.engine import merge_adapters

    if not (out / "adapter_model.safetensors").is_file():
        data = grid_base(adapters, rank)
        for key, value in changes.items():
            set_path(data, key, value, "merge_quality")
        merge_adapters(data, out, overwrite=True)
    modules = json.loads((out / "merge_report.json").read_text())["modules"]
    per_source: dict[int, list[float]] = {}  # over the modules a source has (the alignment adapter: blocks 0-8)
    for entry in modules.values():
        for source, share in zip(entry["sources"], entry.get("task_retained", [])):
            per_source.setdefault(source, []).append(share)
    if not per_source:
        return {}
    return {"task_retained": [sum(per_source[i]) / len(per_source[i]) for i in range(len(adapters))]}


def test_scores(evaluator: Any, adapters: dict[str, Path], records: list[Any]) -> dict[str, dict[int, float]]:
    found = {}
    for name, path in adapters.items():
        evaluator.add_adapter(name, path)
        found[name] = {p.record.line: p.score for p in evaluator.evaluate(name, records).predictions}
        evaluator.remove_adapter(name)
    return found


def chosen_seed(seed: int, adapters: list[Path], evaluator: Any, dev: list[Any], test: list[Any], root: Path) -> dict[str, Any]:
    """Dev selection, then one test read, for one seed; cached in root/chosen.json (root: seed{seed}, or
    seed{seed}/with-align for the four-source merges)."""
    cache = root / "chosen.json"
    root.mkdir(parents=True, exist_ok=True)
    if cache.is_file():
        return json.loads(cache.read_text())
    full = dev_search(adapters, None, method_pairs(adapters, None), evaluator, dev, root / "dev-full.json")
    chosen = {f"{name} (full rank)": (None, row) for name, row in best_per_method(full).items()}
    winner = dev_winner(full)
    alphas = {name: chosen[f"{name} (full rank)"][1]["changes"] for name in CORE}
    svd = [(label, changes) for label, changes in method_pairs(adapters, 16) if family(label) == "svd"]
    svd_rows = dev_search(adapters, 16, svd, evaluator, dev, root / "dev-svd16.json")
    chosen["svd (rank 16)"] = (16, best_per_method(svd_rows)["svd"])
    best_core = max(CORE, key=lambda name: chosen[f"{name} (full rank)"][1]["dev"])
    for rank in RANKS:
        for name in CORE if rank == 16 else (best_core,):
            for subspace in ("merged", "shared"):
                row = {
                    "label": f"{chosen[f'{name} (full rank)'][1]['label']} {subspace}",
                    "changes": {**alphas[name], "subspace": subspace},
                }
                chosen[f"{name} {subspace} (rank {rank})"] = (rank, row)
    test_adapters, retained = {}, {}
    for name, (rank, row) in chosen.items():
        folder = root / "chosen" / name.replace(" ", "_").replace("(", "").replace(")", "")
        retained[name] = merge_candidate(adapters, rank, row["changes"], folder)
        test_adapters[name] = folder
    scores = test_scores(evaluator, test_adapters, test)
    for kind, path in zip(KINDS, adapters):
        own = [record for record in test if record.lang == kind]
        scores[f"task-{kind}"] = test_scores(evaluator, {f"task-{kind}": path}, own)[f"task-{kind}"]
    result = {
        "chosen": {name: {"rank": rank, "label": row["label"], "dev": row.get("dev")} for name, (rank, row) in chosen.items()},
        "search_winner": f"{winner['label']} (full rank)",
        "retained": retained,
        "scores": {name: {str(line): score for line, score in found.items()} for name, found in scores.items()},
    }
    cache.write_text(json.dumps(result) + "\n")
    return result


def method_pairs(adapters: list[Path], rank: int | None) -> list[tuple[str, dict[str, Any]]]:
    """`merge --search methods`'s default grid for these adapters (svd instead of cat at a rank)."""
    return method_candidates(grid_recipe(adapters, rank))


WINNER = "search winner (full rank)"  # per seed, `merge --search methods`' overall winner: what the command writes


def seed_variant(seed: dict[str, Any], name: str) -> str:
    """The variant whose scores stand for name in this seed: the winner is its method's best full-rank candidate."""
    return f"{family(seed['search_winner'])} (full rank)" if name == WINNER else name


def chosen_summary(per_seed: list[dict[str, Any]], kinds_of_lines: dict[int, str]) -> dict[str, Any]:
    """Per variant: each task's mean [interval] over seeds x items, the mean of the three, kept share of the
    own adapters' mean; shared - merged paired per rank."""
    names = [*per_seed[0]["chosen"], WINNER]
    summary: dict[str, Any] = {"variants": {}, "shared - merged": {}}
    own: dict[str, float] = {}
    for kind in KINDS:
        items = sorted(line for line, found in kinds_of_lines.items() if found == kind)
        zero = [dict.fromkeys(items, 0.0) for _ in per_seed]
        scores = {
            n: [{line: seed["scores"][seed_variant(seed, n)][str(line)] for line in items} for seed in per_seed]
            for n in [*names, f"task-{kind}"]
        }
        own[kind] = bootstrap_interval(paired_scores(scores[f"task-{kind}"], zero, items)).to_json()
        for name in names:
            summary["variants"].setdefault(name, {})[kind] = bootstrap_interval(
                paired_scores(scores[name], zero, items)
            ).to_json()
        for name in names:
            if " shared " in name:
                other = name.replace(" shared ", " merged ")
                difference = bootstrap_interval(paired_scores(scores[name], scores[other], items)).to_json()
                summary["shared - merged"].setdefault(name.replace(" shared", ""), {})[kind] = difference
    own_mean = sum(entry["mean"] for entry in own.values()) / len(KINDS)
    summary["own"] = {**own, "mean": own_mean}
    for kinds in summary["variants"].values():
        mean = sum(kinds[kind]["mean"] for kind in KINDS) / len(KINDS)
        kinds["mean"], kinds["kept"] = mean, (mean / own_mean if own_mean else float("nan"))  # --quick: nothing learnt
    return summary


def chosen_tables(summary: dict[str, Any], per_seed: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | chosen on dev, per seed | " + " | ".join(KINDS) + " | mean | kept |",
        "|---|---|" + "---:|" * (len(KINDS) + 2),
    ]
    own = summary["own"]
    lines.append(
        "| each task's own adapter | - | " + " | ".join(interval_cell(own[k]) for k in KINDS) + f" | {own['mean']:.1f} | 100 % |"
    )
    for name, kinds in summary["variants"].items():
        labels = " / ".join(seed["chosen"][seed_variant(seed, name)]["label"] for seed in per_seed)
        cells = " | ".join(interval_cell(kinds[k]) for k in KINDS)
        lines.append(f"| {name} | {labels} | {cells} | {kinds['mean']:.1f} | {100 * kinds['kept']:.0f} % |")
    lines += [
        "",
        "| shared - merged (same alpha) | " + " | ".join(KINDS) + " | retained share per task, merged -> shared (seed 0) |",
        "|---|" + "---:|" * (len(KINDS) + 1),
    ]
    for name, kinds in summary["shared - merged"].items():
        shared, merged = (
            per_seed[0]["retained"][name.replace(" (", " shared (")],
            per_seed[0]["retained"][name.replace(" (", " merged (")],
        )
        share = ", ".join(f"{m:.2f} -> {s:.2f}" for m, s in zip(merged.get("task_retained", []), shared.get("task_retained", [])))
        lines.append(f"| {name} | " + " | ".join(interval_cell(kinds[k], signed=True) for k in KINDS) + f" | {share} |")
    lines.append("\nsearch winner per seed (`merge --search methods`): " + ", ".join(seed["search_winner"] for seed in per_seed))
    return "\n".join(lines)


def align_adapter(plan: DemoPlan, seed: int) -> Path:
    """The demo's alignment adapter for this seed (recipes/isocodes/align.yaml on the gettext UI pairs)."""
    return train_demo_variant(
        Path(f"seed{seed}/align"), "align", "align", plan, {"pairs": "data/pairs-train.jsonl"}, [f"seed={seed}"]
    )


def dev_records(all_languages: bool) -> list[Any]:
    """The dev split by kind: en + fr (114 items; 24 currency), or all six languages (342; 72 currency), whose
    items test the same three tasks through the same adapters and are still never read as test."""
    if all_languages:
        paths = split_by_kind(Path("data/task/dev.jsonl"), Path("data/by-kind/dev-all"), None)
        return by_kind_records(paths, Path("data/by-kind/dev-all-kinds.jsonl"))
    return by_kind_records(
        split_by_kind(Path("data/task/dev.jsonl"), Path("data/by-kind/dev"), LANGUAGES), Path("data/by-kind/dev-kinds.jsonl")
    )


def test_records() -> list[Any]:
    """The test split by kind, en + fr (374 items)."""
    return by_kind_records(
        split_by_kind(Path("data/task/test.jsonl"), Path("data/by-kind/test"), LANGUAGES), Path("data/by-kind/test-kinds.jsonl")
    )


def exact_evaluator(plan: DemoPlan) -> Any:
    from loramerge.evaluate.evaluator import Evaluator

    return Evaluator(plan.model, "exact", batch_size=32, max_new_tokens=plan.max_new_tokens)


def task_adapters(plan: DemoPlan, seed: int) -> list[Path]:
    """The seed's three task adapters, trained once and reused from --out afterwards."""
    train_files = split_by_kind(Path("data/task/train.jsonl"), Path("data/by-kind/train"), None)
    return [train_kind(kind, train_files[kind], plan, seed) for kind in KINDS]


def chosen_root(seed: int, with_align: bool, dev_all: bool) -> Path:
    """Where `--chosen` keeps a seed's dev scores, merges and test scores (`--union` reads them there)."""
    return Path(f"seed{seed}") / ("with-align" if with_align else "") / ("dev-all" if dev_all else "")


def dev_grid_cache(grid: Path, dev_all: bool) -> str:
    """Where `--dev-grid` keeps a grid file's dev scores per seed, and `--union` finds them."""
    return f"dev-grid-{grid.stem}{'-all' if dev_all else ''}.json"


def chosen_stage(plan: DemoPlan, seeds: list[int], console: Console, with_align: bool, dev_all: bool) -> str:
    dev = dev_records(dev_all)
    test = test_records()
    kinds_of_lines = {record.line: record.lang for record in test}
    evaluator = exact_evaluator(plan)
    per_seed = []
    for seed in seeds:
        console.rule(f"seed {seed}")
        adapters = task_adapters(plan, seed)
        # --with-align: the alignment adapter as a fourth source (the paper's merge, beside three tasks): 4 x r16
        # inputs, so a rank-16 output must drop three quarters of the stacked rank
        extra = [align_adapter(plan, seed)] if with_align else []
        root = chosen_root(seed, with_align, dev_all)
        per_seed.append(chosen_seed(seed, adapters + extra, evaluator, dev, test, root))
    summary = chosen_summary(per_seed, kinds_of_lines)
    name = "chosen" + ("-with-align" if with_align else "") + ("-dev-all" if dev_all else "")
    Path(f"{name}.json").write_text(
        json.dumps({"seeds": seeds, "summary": summary, "per_seed_chosen": [s["chosen"] for s in per_seed]}, indent=1) + "\n"
    )
    return chosen_tables(summary, per_seed)


def dev_stage(plan: DemoPlan, seeds: list[int], candidates: list[tuple[str, dict[str, Any]]], cache: str, dev_all: bool) -> str:
    """DEV only (no test read): the candidates, per seed, on the `--chosen` stage's adapters and dev items."""
    dev = dev_records(dev_all)
    evaluator = exact_evaluator(plan)
    lines = ["| candidate | " + " | ".join(f"seed {seed}: mean (country / language / currency)" for seed in seeds) + " |"]
    lines.append("|---|" + "---|" * len(seeds))
    per_seed = []
    for seed in seeds:
        adapters = task_adapters(plan, seed)
        per_seed.append(dev_search(adapters, None, candidates, evaluator, dev, Path(f"seed{seed}/{cache}")))
    for index, (label, _) in enumerate(candidates):
        cells = [f"{rows[index]['dev']:.1f} ({kind_scores(rows[index])})" for rows in per_seed]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def code_length(text: str) -> int | None:
    """'{"currency": "NO"}' -> 2: the length of the answer's code, None where the answer is not one JSON string."""
    try:
        value = next(iter(json.loads(text).values()))
    except (ValueError, StopIteration, AttributeError):
        return None
    return len(value) if isinstance(value, str) else None


def dev_answers_stage(plan: DemoPlan, seeds: list[int], candidates: list[tuple[str, dict[str, Any]]], dev_all: bool) -> str:
    """DEV only: per candidate and kind, exact match and how many answers carry a 2- or 3-letter code (country
    and language codes have 2 letters, currency codes 3): whether a merge keeps each task's answer format."""
    dev = dev_records(dev_all)
    evaluator = exact_evaluator(plan)
    lines = ["| seed | candidate | " + " | ".join(f"{k}: exact, 2 / 3 letters" for k in KINDS) + " |"]
    lines.append("|---|---|" + "---|" * len(KINDS))
    for seed in seeds:
        adapters = task_adapters(plan, seed)
        for index, (label, changes) in enumerate(candidates):
            folder = Path(f"seed{seed}/answers{'-all' if dev_all else ''}/{index}")
            merge_candidate(adapters, None, changes, folder)
            evaluator.add_adapter("candidate", folder)
            predictions = evaluator.evaluate("candidate", dev).predictions
            evaluator.remove_adapter("candidate")
            cells = []
            for kind in KINDS:
                found = [p for p in predictions if p.record.lang == kind]
                lengths = [code_length(p.text) for p in found]
                exact = sum(p.score for p in found) / len(found)  # item scores are 0 or 100
                cells.append(f"{exact:.1f} %, {lengths.count(2)} / {lengths.count(3)} of {len(found)}")
            lines.append(f"| {seed} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def union_stage(plan: DemoPlan, seeds: list[int], grid: Path, dev_all: bool) -> str:
    """Per seed, the dev winner of `merge --search methods`' default grid together with a grid file's
    candidates, read on TEST once, beside `--chosen`'s variants (whose run this needs: its dev scores, own
    adapters' test scores and table are reused)."""
    dev = dev_records(dev_all)
    test = test_records()
    evaluator = exact_evaluator(plan)
    name = f"dev winner, default grid + {grid.stem}"
    per_seed = []
    for seed in seeds:
        root = chosen_root(seed, False, dev_all)
        if not (root / "chosen.json").is_file():
            raise SystemExit(
                f"{root}/chosen.json is missing: run --chosen{' --dev-all' if dev_all else ''} for seed {seed} first"
            )
        result = json.loads((root / "chosen.json").read_text())
        adapters = task_adapters(plan, seed)
        rows = [
            *dev_search(adapters, None, method_pairs(adapters, None), evaluator, dev, root / "dev-full.json"),
            *dev_search(
                adapters, None, grid_candidates(grid), evaluator, dev, Path(f"seed{seed}") / dev_grid_cache(grid, dev_all)
            ),
        ]
        winner = dev_winner(rows)
        cache = root / f"union-{grid.stem}.json"
        if not cache.is_file():
            folder = root / f"union-{grid.stem}"
            merge_candidate(adapters, None, winner["changes"], folder)
            scores = test_scores(evaluator, {name: folder}, test)[name]
            cache.write_text(json.dumps({"label": winner["label"], "dev": winner["dev"], "scores": scores}) + "\n")
        found = json.loads(cache.read_text())
        result["chosen"][name] = {"rank": None, "label": found["label"], "dev": found["dev"]}
        result["scores"][name] = found["scores"]  # lines as JSON keys (strings), as in chosen.json
        per_seed.append(result)
    return chosen_tables(chosen_summary(per_seed, {record.line: record.lang for record in test}), per_seed)


def kind_scores(row: dict[str, Any]) -> str:
    return " / ".join(f"{row['kinds'][kind]:.1f}" for kind in KINDS)


def ties_candidates(densities: list[float]) -> list[tuple[str, dict[str, Any]]]:
    from loramerge.merge.method_grid import ALL_KEYS

    return [(f"ties density={d:g}", {**dict.fromkeys(ALL_KEYS), "method": "ties", "density": d}) for d in densities]


def grid_candidates(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """A `merge --search grid.yaml` file's candidates (sources.I.weight, method, density, ...)."""
    from loramerge.merge.search_grid import grid_file

    return [(candidate.label, candidate.changes) for candidate in grid_file(path)]


def absolute_path(text: str) -> Path:
    """A grid file's path resolved from the caller's folder: the stages run inside --out, where it would not be found."""
    return Path(text).resolve()


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("bench/out/merge-quality"))
    parser.add_argument("--quick", action="store_true", help="the demo's --quick plan: a smoke run of this script")
    parser.add_argument("--chosen", action="store_true", help="every method at its scale chosen on dev (issue 23)")
    parser.add_argument("--with-align", action="store_true", help="--chosen with the alignment adapter as a 4th source")
    parser.add_argument("--dev-all", action="store_true", help="--chosen on the dev split's six languages, not en + fr")
    parser.add_argument("--dev-ties", default=None, help="dev only: ties at these densities, e.g. 0.7,0.8,0.9,1")
    parser.add_argument("--dev-grid", type=absolute_path, default=None, help="dev only: a `merge --search` grid .yaml file")
    parser.add_argument("--dev-answers", type=absolute_path, default=None, help="dev only: a grid file's answer formats per task")
    parser.add_argument(
        "--union", type=absolute_path, default=None, help="test once: the dev winner of the default grid + a grid file"
    )
    options = parser.parse_args()
    plan = QUICK if options.quick else FULL
    seeds = [int(seed) for seed in options.seeds.split(",")]
    console = Console(stderr=True)
    options.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with working_directory(options.out):
        if not Path("data/task/test.jsonl").is_file():
            build_data(plan, console)
        if options.dev_ties:
            densities = [float(d) for d in options.dev_ties.split(",")]
            cache = f"dev-ties-extra{'-all' if options.dev_all else ''}.json"
            print(dev_stage(plan, seeds, ties_candidates(densities), cache, options.dev_all))
            return
        if options.dev_answers:
            print(dev_answers_stage(plan, seeds, grid_candidates(options.dev_answers), options.dev_all))
            return
        if options.union:
            print(union_stage(plan, seeds, options.union, options.dev_all))
            return
        if options.dev_grid:
            cache = dev_grid_cache(options.dev_grid, options.dev_all)
            print(dev_stage(plan, seeds, grid_candidates(options.dev_grid), cache, options.dev_all))
            return
        if options.chosen:
            print(chosen_stage(plan, seeds, console, options.with_align, options.dev_all))
            print(f"\n{len(seeds)} seeds; exact match, percent, mean [95 % interval]; {time.perf_counter() - started:.0f} s")
            return
        test_files = split_by_kind(Path("data/task/test.jsonl"), Path("data/by-kind/test"), LANGUAGES)
        test = Path("data/by-kind/test-all.jsonl")
        test.write_text("".join(path.read_text(encoding="utf-8") for path in test_files.values()), encoding="utf-8")
        kinds_of_lines = {
            line: json.loads(text)["id"].split(":")[0]
            for line, text in enumerate(test.read_text(encoding="utf-8").splitlines(), 1)
        }
        per_seed = []
        for seed in seeds:
            console.rule(f"seed {seed} ({time.perf_counter() - started:.0f} s so far)")
            adapters = task_adapters(plan, seed)
            merged = merge_all(adapters, seed)
            names = {f"task-{kind}": path for kind, path in zip(KINDS, adapters)} | merged
            per_seed.append(evaluate(names, test, plan, seed, console))
        comparison = compare(per_seed, kinds_of_lines)
        result = {
            "model": plan.model,
            "seeds": seeds,
            "languages": LANGUAGES,
            "comparison": comparison,
            "seconds": round(time.perf_counter() - started),
            "command": " ".join(sys.argv),
        }
        Path("merge_quality.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(tables(comparison))
    print(f"\n{len(seeds)} seeds; exact match, percent, mean [95 % interval]; {result['seconds']} s")


if __name__ == "__main__":
    main()
