"""`loramerge demo`: the paper's method end to end on a bundled model, offline, on this machine's own data.

1. data: the iso-codes task (train: English and French names only; test: the same entities in every
   language) and gettext UI sentence pairs en <-> ru, zh_CN, ja for alignment (iso_* catalogs left out, so
   alignment data and task come from different domains; Korean gets no alignment data at all);
2. train-align (recipes/demo/align.yaml); 3. train-task (recipes/demo/task.yaml);
4. merge them exactly (recipes/demo/merge.yaml); 5. evaluate base, task-only and merged per language;
6. probe per-layer retrieval of base, alignment and merged adapters; 7. report.md, results.json, plots.

Everything is staged and renamed into --out at the end; paths recorded inside are relative to --out, so the
recipes in OUT/recipes/ rerun each step from there with the three commands.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from loramerge.atomic import atomic_directory, output_dir_problem
from loramerge.data.corpora import FilterSettings, extract_gettext
from loramerge.data.isocodes import build_iso_task
from loramerge.data.summaries import print_extraction, print_iso_task
from loramerge.demo.plan import FULL, QUICK, DemoPlan
from loramerge.demo.report import demo_results, write_report
from loramerge.errors import LoramergeError
from loramerge.evaluate.probe_run import ProbeSettings, run_probe
from loramerge.evaluate.run import EvalSettings, run_eval
from loramerge.merge.engine import merge_adapters
from loramerge.output_lock import output_lock
from loramerge.recipes import apply_override, read_recipe_file, shipped_recipe, validate_recipe
from loramerge.train.recipe import TrainRecipe
from loramerge.train.run import train_adapter


@contextmanager
def working_directory(folder: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


class Steps:
    """Numbered step headers with the elapsed time, so a 10-minute run always says where it is."""

    def __init__(self, console: Console, total: int) -> None:
        self.console, self.total, self.done = console, total, 0
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.current = ""
        self._last = self.started

    def start(self, name: str, what: str) -> None:
        self._close()
        self.done += 1
        self.current = name
        elapsed = time.perf_counter() - self.started
        self.console.rule(f"[bold]{self.done}/{self.total}[/bold] {what}  [dim]({elapsed:.0f} s so far)[/dim]")

    def _close(self) -> None:
        now = time.perf_counter()
        if self.done:
            self.seconds[self.current] = round(now - self._last, 1)
        self._last = now

    def finish(self) -> float:
        self._close()
        return time.perf_counter() - self.started


def test_subset(test_file: Path, entities: int, out: Path, seed: int = 0) -> Path:
    """The first `entities` of a seeded shuffle of the test entities, in every language (still parallel)."""
    records = [json.loads(line) for line in test_file.read_text(encoding="utf-8").splitlines()]
    ids = sorted({record["id"] for record in records})
    random.Random(seed).shuffle(ids)
    keep = set(ids[:entities])
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records if r["id"] in keep), encoding="utf-8")
    return out


def build_data(plan: DemoPlan, console: Console) -> dict[str, Any]:
    started = time.perf_counter()
    task = build_iso_task(list(plan.supervised), list(plan.transfer), Path("data/task"))
    print_iso_task(task, console)
    test_subset(Path("data/task/test.jsonl"), plan.test_entities, Path("data/task/test-demo.jsonl"))
    no_task_domain = FilterSettings(exclude=("iso_*",))  # the task's own catalogs stay out of the alignment data
    pairs = extract_gettext(list(plan.aligned), Path("data/pairs.jsonl"), settings=no_task_domain)
    print_extraction(pairs, time.perf_counter() - started, console)
    # The probe's sentences: test-split UI sentences (never trained on) in every transfer language, Korean included.
    probe = extract_gettext(list(plan.transfer), Path("data/probe.jsonl"), settings=no_task_domain, multiway=True)
    return {
        "task_records": task.counts,
        "task_entities": task.entities,
        "pairs": pairs.counts,
        "probe_sentences": probe.sources.get("test", 0),
    }


def demo_recipe(name: str, plan: DemoPlan, paths: dict[str, str]) -> dict[str, Any]:
    """recipes/demo/NAME.yaml with the data paths and the plan's model filled in, as OUT/recipes/NAME.yaml."""
    data = read_recipe_file(shipped_recipe("demo", name))
    if name != "merge":
        data["model"] = plan.model
    data.update(paths)
    for assignment in plan.recipe_overrides.get(name, []):
        apply_override(data, assignment)
    return data


def write_recipe(data: dict[str, Any], name: str, command: str) -> Path:
    path = Path("recipes") / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    header = f"# Rerun this step from the demo folder:\n#   {command}\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def train(name: str, mode: str, plan: DemoPlan, paths: dict[str, str]) -> dict[str, Any]:
    data = demo_recipe(name, plan, paths)
    path = write_recipe(data, name, f"loramerge train-{mode} --recipe recipes/{name}.yaml --out adapters/{name}")
    recipe = validate_recipe(TrainRecipe, data, str(path))
    result = train_adapter(recipe, mode, Path("adapters") / name)  # type: ignore[arg-type]
    losses = {key: round(value, 4) for key, value in result.metrics.items()}
    return {"steps": result.state.step, "align_layer": result.align_layer, **losses}


def merge(plan: DemoPlan) -> dict[str, Any]:
    data = demo_recipe("merge", plan, {})
    write_recipe(data, "merge", "loramerge merge --recipe recipes/merge.yaml --out adapters/merged")
    result = merge_adapters(data, Path("adapters/merged"))
    report = result.report
    return {
        "method": report["method"],
        "exact": report["exact"],
        "rank_max": report["rank_max"],
        "weights": [s["weight"] for s in data["sources"]],
    }


def evaluate(plan: DemoPlan, console: Console) -> dict[str, Any]:
    settings = EvalSettings(
        model=plan.model,
        data=Path("data/task/test-demo.jsonl"),
        out=Path("eval"),
        adapters=("task=adapters/task", "merged=adapters/merged"),
        supervised=",".join(plan.supervised),
        max_new_tokens=plan.max_new_tokens,
        batch_size=32,  # bench/quality.py measured 6.7 generations/s at 32 on 2 cores (Gemma-3-270M, 600 items)
    )
    return run_eval(settings, console)


def probe(plan: DemoPlan, console: Console) -> dict[str, Any]:
    settings = ProbeSettings(
        model=plan.model,
        pairs=Path("data/probe-test.jsonl"),
        out=Path("probe"),
        adapters=("align=adapters/align", "merged=adapters/merged"),
        max_sentences=plan.probe_sentences,
    )
    return run_probe(settings, console)


def run_demo(out: Path, quick: bool, overwrite: bool, console: Console) -> Path:
    with output_lock(out):
        if (problem := output_dir_problem(out, overwrite)) is not None:
            raise LoramergeError(problem)
        plan = QUICK if quick else FULL
        steps = Steps(console, total=7)
        with atomic_directory(out) as staging, working_directory(staging):
            steps.start("data", "data: iso-codes task and gettext sentence pairs from this machine's catalogs")
            data = build_data(plan, console)
            steps.start("train-align", f"train-align on {plan.model}: en <-> {', '.join(plan.aligned)} UI sentences")
            align = train("align", "align", plan, {"pairs": "data/pairs-train.jsonl"})
            steps.start("train-task", f"train-task: {', '.join(plan.supervised)} names only")
            task = train("task", "task", plan, {"data": "data/task/train.jsonl"})
            steps.start("merge", "merge task + alignment adapters (exact)")
            merged = merge(plan)
            steps.start("eval", "evaluate base, task-only and merged in every language")
            evaluation = evaluate(plan, console)
            steps.start("probe", "probe per-layer cross-lingual retrieval: base, alignment, merged")
            layer = align["align_layer"]
            retrieval = probe(plan, console)
            steps.start("report", "report")
            seconds = steps.finish()
            results = demo_results(plan, data, align, task, merged, evaluation, retrieval, layer, steps.seconds, seconds)
            write_report(results, Path("."))
            shutil.copy("eval/scores.png", "scores.png")
            shutil.copy("probe/probe.png", "retrieval.png")
        console.print(f"report: {out / 'report.md'}  (results.json, scores.png, retrieval.png, adapters/, recipes/ beside it)")
        return out
