"""`loramerge demo`: the paper's method end to end on a bundled model, offline, on this machine's own data.

1. data: the topic task (which kind of program a UI sentence comes from; train: English only; test: the same
   sentences in fr, de, ja, ru, zh_CN) and its alignment pairs (the English training sentences with their
   ru, zh_CN, ja translations; fr and de get none);
2. train-align (recipes/demo/align.yaml); 3. train-task --pairs, joint training (recipes/demo/joint.yaml);
4. train-task, task only (recipes/demo/task.yaml); 5. merge task + alignment adapters exactly
   (recipes/demo/merge.yaml); 6. evaluate task-only, joint and merged per language (exact match; one
   teacher-forced pass per item); 7. probe per-layer retrieval of base, alignment, joint and merged adapters;
8. report.md (did transfer improve? with intervals and the run's detectable effect), results.json, plots.

Everything is staged and renamed into --out at the end; paths recorded inside are relative to --out, so the
recipes in OUT/recipes/ rerun each step from there with the three commands.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from loramerge.atomic import atomic_directory, output_dir_problem
from loramerge.data.summaries import print_topic_task
from loramerge.data.topic_subsets import first_per_label, probe_pairs
from loramerge.data.topics import build_topic_task
from loramerge.demo.plan import FULL, QUICK, DemoPlan
from loramerge.demo.plots import plot_demo_scores
from loramerge.demo.report import PRECISION_WORDS, demo_results, write_report
from loramerge.errors import LoramergeError
from loramerge.evaluate.probe_run import ProbeSettings, run_probe
from loramerge.evaluate.run import EvalSettings, run_eval
from loramerge.merge.engine import merge_adapters
from loramerge.models.precision import resolved_precision
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


def build_data(plan: DemoPlan, console: Console) -> dict[str, Any]:
    task = build_topic_task(list(plan.supervised), list(plan.transfer), Path("data/topics"), align_langs=list(plan.aligned))
    print_topic_task(task, console)
    first_per_label(Path("data/topics/test.jsonl"), plan.test_per_label, Path("data/test-demo.jsonl"))
    # The probe's sentences: dev sentences in all six languages, never in the alignment pairs or the test items.
    probe_pairs(Path("data/topics/dev.jsonl"), plan.probe_sentences, Path("data/probe-pairs.jsonl"))
    return {
        "task_records": task.counts,
        "per_label": task.per_label,
        "test_items_per_label": plan.test_per_label,
        "probe_sentences": plan.probe_sentences,
    }


def demo_recipe(name: str, plan: DemoPlan, paths: dict[str, str]) -> dict[str, Any]:
    """recipes/GROUP/NAME.yaml (GROUP: the plan's recipes) with the data paths and the plan's model filled in."""
    data = read_recipe_file(shipped_recipe(plan.recipes, name))
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
        data=Path("data/test-demo.jsonl"),
        out=Path("eval"),
        adapters=tuple(f"{name}=adapters/{name}" for name in EVALUATED),
        include_base=False,  # the base model does not know the six labels: it scores 0 (BENCHMARKS.md, topic task)
        supervised=",".join(plan.supervised),
        max_new_tokens=plan.max_new_tokens,
        batch_size=32,
        precision="auto",  # as training: bf16 autocast where this machine's bf16 matmul measured faster
    )
    return run_eval(settings, console)


def probe(plan: DemoPlan, console: Console) -> dict[str, Any]:
    settings = ProbeSettings(
        model=plan.model,
        pairs=Path("data/probe-pairs.jsonl"),
        out=Path("probe"),
        adapters=tuple(f"{name}=adapters/{name}" for name in ("align", "joint", "merged")),
        max_sentences=plan.probe_sentences,
    )
    return run_probe(settings, console)


EVALUATED = ("task", "joint", "merged")  # task-only first: the others are compared with it


def run_demo(out: Path, quick: bool, overwrite: bool, console: Console) -> Path:
    with output_lock(out):
        if (problem := output_dir_problem(out, overwrite)) is not None:
            raise LoramergeError(problem)
        plan = QUICK if quick else FULL
        steps = Steps(console, total=8)
        with atomic_directory(out) as staging, working_directory(staging):
            steps.start("data", "data: the topic task and its alignment pairs from this machine's gettext catalogs")
            data = build_data(plan, console)
            precision = resolved_precision("auto")  # measured once per machine; training and eval read the same answer
            console.print(f"precision: {PRECISION_WORDS[precision]}")
            pairs = {"pairs": "data/topics/align-train.jsonl"}
            task_data = {"data": "data/topics/train.jsonl"}
            steps.start("train-align", f"train-align on {plan.model}: en <-> {', '.join(plan.aligned)}, the task's own sentences")
            align = train("align", "align", plan, pairs)
            steps.start("train-joint", f"train-task --pairs: joint, {', '.join(plan.supervised)} task data + alignment")
            joint = train("joint", "task", plan, {**task_data, **pairs})
            steps.start("train-task", f"train-task: {', '.join(plan.supervised)} task data only")
            task = train("task", "task", plan, task_data)
            steps.start("merge", "merge task + alignment adapters (exact)")
            merged = merge(plan)
            steps.start("eval", f"evaluate {', '.join(EVALUATED)} in every language")
            evaluation = evaluate(plan, console)
            steps.start("probe", "probe per-layer cross-lingual retrieval: base, alignment, joint, merged")
            retrieval = probe(plan, console)
            steps.start("report", "report")
            seconds = steps.finish()
            training = {"align": align, "joint": joint, "task": task}
            results = demo_results(plan, data, training, merged, evaluation, retrieval, precision, steps.seconds, seconds)
            write_report(results, Path("."))
            plot_demo_scores(results, Path("scores.png"))
            shutil.copy("probe/probe.png", "retrieval.png")
        console.print(f"report: {out / 'report.md'}  (results.json, scores.png, retrieval.png, adapters/, recipes/ beside it)")
        return out
