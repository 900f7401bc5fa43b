"""Training benchmark on the bundled models: loramerge vs transformers Trainer + PEFT, side by side.

    .venv/bin/python bench/train.py                       # every case below, ~25 min on 2 idle cores
    .venv/bin/python bench/train.py --cases gemma-task --steps 6      # one case, a quick look
    .venv/bin/python bench/train.py --before 601a53e      # adds loramerge at that commit as a third side
    .venv/bin/python bench/train.py --device cuda --precision bf16 --name gpu   # bench/gpu.sh: one GPU

Each side is a whole training in its own process (bench/train_side.py): `loramerge train-*`'s
`train_adapter`, or the Trainer on `peft.get_peft_model` given the same token ids in the same batches. The
sides take turns one optimizer step at a time (this process hands out the turns), so step i of every side
runs within seconds of the others under the same background load; the first `--warmup` steps (model
loading, first-touch allocation) are dropped. Reported per side: tokens/s (non-pad tokens of the timed
steps / their summed time), the median step, and VmHWM (peak resident memory of the side's process, model
loading included). Ratios are per step pair (loramerge step i / Trainer step i), median and quartiles.

Cases (the issue's): the demo's iso-codes task and settings on Gemma-3-270M (262,144-token vocabulary) and
SmolLM2-135M (49,152), prompt-heavy records (the paper's shape: long input, short answer) on Gemma, the
alignment step (loramerge exits after block k; the reference code runs the whole model and head), and joint
training (task and alignment batches alternating) against task-only training, both loramerge.
Results: bench/out/train.json and bench/out/train.md (git-ignored).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers

from loramerge.data.corpora import FilterSettings, extract_gettext
from loramerge.data.isocodes import build_iso_task
from loramerge.data.topics import ALIGN_FILE, build_topic_task
from loramerge.recipes import apply_override, read_recipe_file, shipped_recipe

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SIDE_SCRIPT = Path(__file__).resolve().parent / "train_side.py"
PREFIX = "@@bench "  # bench/train_side.py's protocol lines
GEMMA, SMOLLM2 = "bundled:gemma-3-270m", "bundled:smollm2-135m"
ALIGNED = ["ru", "zh_CN", "ja"]  # the demo's alignment languages


@dataclass(frozen=True)
class Case:
    name: str
    model: str
    mode: str  # task | align | joint
    data: str  # demo | prompt-heavy (task data); pairs always the demo's
    # "loramerge", "trainer", "before" (loramerge at --before), "loramerge-task", "loramerge-checkpointing",
    # "loramerge-nosplit" (split_by_length off: what the length split buys or costs), "loramerge-bf16" (bf16 autocast)
    sides: tuple[str, ...]
    overrides: tuple[str, ...] = field(default_factory=tuple)


CASES = [
    Case("gemma-task", GEMMA, "task", "demo", ("loramerge", "trainer", "before", "loramerge-checkpointing")),
    Case("gemma-prompt-heavy", GEMMA, "task", "prompt-heavy", ("loramerge", "trainer", "before"), ("max_length=160",)),
    Case("gemma-align", GEMMA, "align", "demo", ("loramerge", "trainer", "before")),
    Case("gemma-joint", GEMMA, "joint", "demo", ("loramerge", "loramerge-task")),
    # issue 25: smaller alignment micro-batches (pairs), what they cost beside a task step
    Case("gemma-joint-6", GEMMA, "joint", "demo", ("loramerge", "loramerge-task"), ("align.batch_size=6",)),
    Case("gemma-joint-4", GEMMA, "joint", "demo", ("loramerge", "loramerge-task"), ("align.batch_size=4",)),
    Case("smollm2-task", SMOLLM2, "task", "demo", ("loramerge", "trainer", "before")),
    Case("smollm2-align", SMOLLM2, "align", "demo", ("loramerge", "trainer")),
    Case("gemma-split", GEMMA, "task", "demo", ("loramerge", "loramerge-nosplit")),
    Case("smollm2-split", SMOLLM2, "task", "demo", ("loramerge", "loramerge-nosplit")),
    # issue 33: the demo's topic task in float32 and in bf16 autocast; the joint step (task : alignment 2 : 1) likewise
    Case("gemma-topic", GEMMA, "task", "topics", ("loramerge", "loramerge-bf16"), ("max_length=96",)),
    Case(
        "gemma-topic-joint", GEMMA, "joint", "topics", ("loramerge", "loramerge-bf16"), ("max_length=96", "task_per_align=[2,1]")
    ),
]


# --- data -----------------------------------------------------------------------------------------


def prompt_heavy_records(pairs_file: Path, out: Path, count: int, seed: int) -> Path:
    """The paper's shape of task data: a long input and a short answer (there, 80-200 token inputs for
    one-word labels or short slot lists). Here: four UI sentences in an aligned language as context, and the
    English of the first one as the answer. Real token ids of the real tokenizer; the content is not a task."""
    rows = [json.loads(line) for line in pairs_file.read_text(encoding="utf-8").splitlines()]
    rng = random.Random(seed)
    with out.open("w", encoding="utf-8") as handle:
        for _ in range(count):
            chosen = rng.sample(rows, 4)
            context = " ".join(row["target"] for row in chosen)
            handle.write(
                json.dumps(
                    {"prompt": f"Text: {context}\nEnglish of the first sentence: ", "completion": chosen[0]["source"][:60]},
                    ensure_ascii=False,
                )
                + "\n"
            )
    return out


def build_data(folder: Path) -> dict[str, Path]:
    """The demo's data (loramerge/demo/run.py builds it the same way): iso-codes task, gettext pairs."""
    folder.mkdir(parents=True, exist_ok=True)
    task = folder / "task" / "train.jsonl"
    if not task.exists():
        build_iso_task(["en", "fr"], ["ru", "zh_CN", "ja", "ko"], folder / "task")
    pairs = folder / "pairs-train.jsonl"
    if not pairs.exists():
        extract_gettext(ALIGNED, folder / "pairs.jsonl", settings=FilterSettings(exclude=("iso_*",)))
    heavy = folder / "prompt-heavy.jsonl"
    if not heavy.exists():
        prompt_heavy_records(pairs, heavy, 512, seed=0)
    topics = folder / "topics"
    if not (topics / "train.jsonl").exists():  # the demo's topic task (loramerge/demo/run.py)
        build_topic_task(["en"], ["fr", "de", "ja", "ru", "zh_CN"], topics, align_langs=ALIGNED)
    return {
        "demo": task,
        "prompt-heavy": heavy,
        "pairs": pairs,
        "topics": topics / "train.jsonl",
        "topics-pairs": topics / ALIGN_FILE,
    }


def case_recipe(case: Case, data: dict[str, Path], steps: int, precision: str) -> dict[str, Any]:
    """recipes/isocodes/{task,align}.yaml (the iso-codes demo's batch, lengths and LoRA) with the case's data and model."""
    name = "align" if case.mode == "align" else "task"
    recipe = read_recipe_file(shipped_recipe("isocodes", name))
    recipe.pop("extends", None)
    recipe.update({"model": case.model, "max_steps": steps, "log_every": 1, "precision": precision})
    if case.mode != "align":
        recipe["data"] = str(data[case.data])
    if case.mode != "task":
        recipe["pairs"] = str(data.get(f"{case.data}-pairs", data["pairs"]))  # a task's own pairs where it has them
        # the demo's layer 9 of Gemma's 18 blocks; other models: the default round(L/2)
        recipe["align"] = {**recipe.get("align", {}), "layer": 9 if case.model == GEMMA else None}
    if case.mode == "joint":
        recipe["task_per_align"] = [1, 1]
    for override in case.overrides:
        apply_override(recipe, override)
    return recipe


# --- lockstep -------------------------------------------------------------------------------------


class Side:
    def __init__(self, label: str, spec: dict[str, Any], pythonpath: str | None) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.label = label
        self.steps: list[dict[str, Any]] = []
        self.vmhwm_mib: float | None = None
        self.cuda_peak_mib: float | None = None
        self.process = subprocess.Popen(
            [sys.executable, str(SIDE_SCRIPT), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(Path(spec["out"]).with_suffix(".stderr"), "w"),  # noqa: SIM115 - lives as long as the side
            text=True,
            env=env,
            cwd=ROOT,
        )

    def next_report(self) -> dict[str, Any] | None:
        """The side's next step (or None when it has ended, after reading its peak memory)."""
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if not line.startswith(PREFIX):
                continue  # output of the training itself
            record = json.loads(line[len(PREFIX) :])
            if "vmhwm_mib" in record:
                self.vmhwm_mib = record["vmhwm_mib"]
                self.cuda_peak_mib = record.get("cuda_peak_mib")
                continue
            self.steps.append(record)
            return record
        if self.process.wait() != 0:
            raise RuntimeError(f"bench side {self.label} failed (exit {self.process.returncode}); see its .stderr file")
        return None

    def go(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()


def run_lockstep(sides: list[Side], steps: int) -> None:
    """Every side does its first step (loading included) freely, then they take turns: one step each, in
    rotating order, so no side always runs right after the same neighbour."""
    for side in sides:
        side.next_report()
    for step in range(1, steps):
        order = sides[step % len(sides) :] + sides[: step % len(sides)]
        for side in order:
            side.go()
            side.next_report()
    for side in sides:
        side.go()  # past the last step: let it write its output and report its peak memory
        while side.next_report() is not None:
            pass


# --- statistics -----------------------------------------------------------------------------------


def side_summary(side: Side, warmup: int) -> dict[str, Any]:
    timed = side.steps[warmup:]
    seconds = [s["seconds"] for s in timed]
    tokens = [s["tokens"] for s in timed]
    by_objective: dict[str, list[float]] = {}
    for step in timed:
        by_objective.setdefault(step["objective"], []).append(step["seconds"])
    return {
        "tokens_per_second": sum(tokens) / sum(seconds),
        "median_step_seconds": statistics.median(seconds),
        "median_step_seconds_by_objective": {k: statistics.median(v) for k, v in by_objective.items()},
        "vmhwm_mib": side.vmhwm_mib,
        "cuda_peak_mib": side.cuda_peak_mib,
        "first_loss": side.steps[0]["loss"],
        "losses": [s["loss"] for s in side.steps],
        "step_seconds": [round(s, 3) for s in seconds],
        "tokens": tokens,
    }


def paired(first: Side, second: Side, warmup: int) -> dict[str, Any]:
    """Per step pair: (first's tokens/s) / (second's tokens/s)."""
    ratios = [
        (a["tokens"] / a["seconds"]) / (b["tokens"] / b["seconds"])
        for a, b in zip(first.steps[warmup:], second.steps[warmup:], strict=True)
    ]
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "quartiles": [quartiles[0], quartiles[2]], "pairs": len(ratios)}


def joint_cost(joint: Side, task: Side, warmup: int) -> dict[str, Any]:
    """A joint step (one task + one alignment micro-batch) over a task-only step, pair by pair: the joint
    side's consecutive task and align steps against the two task steps the other side ran beside them."""
    ratios = []
    rows = list(zip(joint.steps, task.steps, strict=True))[warmup:]
    for (j1, t1), (j2, t2) in zip(rows[0::2], rows[1::2]):
        if {j1["objective"], j2["objective"]} == {"task", "align"}:
            ratios.append((j1["seconds"] + j2["seconds"]) / ((t1["seconds"] + t2["seconds"]) / 2))
    return {"median": statistics.median(ratios), "pairs": len(ratios)}


# --- driver ---------------------------------------------------------------------------------------


def side_spec(label: str, case: Case, recipe: dict[str, Any], work: Path, device: str) -> dict[str, Any]:
    side = "trainer" if label == "trainer" else "loramerge"
    mode = "task" if label == "loramerge-task" else case.mode
    if label == "loramerge-task":  # the same task batches, without the alignment half
        recipe = {key: value for key, value in recipe.items() if key not in ("pairs", "task_per_align")}
    if label == "loramerge-checkpointing":  # activations recomputed in the backward pass: memory for time
        recipe = {**recipe, "gradient_checkpointing": True}
    if label == "loramerge-nosplit":
        recipe = {**recipe, "split_by_length": False}
    if label == "loramerge-bf16":
        recipe = {**recipe, "precision": "bf16"}
    return {"side": side, "mode": mode, "recipe": recipe, "out": str(work / f"{case.name}-{label}"), "device": device}


def before_tree(commit: str, work: Path) -> str:
    tree = work / f"loramerge-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, check=True)  # a killed run's registration
        subprocess.run(
            ["git", "worktree", "add", "--force", "--detach", str(tree), commit], cwd=ROOT, check=True, capture_output=True
        )
    return str(tree)


def run_case(case: Case, data: dict[str, Path], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    recipe = case_recipe(case, data, args.steps, args.precision)
    labels = [label for label in case.sides if label != "before" or args.before]
    sides = []
    for label in labels:
        pythonpath = before_tree(args.before, work) if label == "before" else str(ROOT)
        sides.append(Side(label, side_spec(label, case, recipe, work, args.device), pythonpath))
    try:
        run_lockstep(sides, args.steps)
    finally:
        for side in sides:
            side.process.kill()
    named = {side.label: side for side in sides}
    result: dict[str, Any] = {"case": case.name, "model": case.model, "mode": case.mode, "data": case.data, "recipe": recipe}
    result["sides"] = {label: side_summary(side, args.warmup) for label, side in named.items()}
    for other in ("trainer", "before"):
        if other in named:
            result[f"loramerge_vs_{other}"] = paired(named["loramerge"], named[other], args.warmup)
    if "loramerge-checkpointing" in named and "trainer" in named:
        result["checkpointing_vs_trainer"] = paired(named["loramerge-checkpointing"], named["trainer"], args.warmup)
    if "loramerge-nosplit" in named:
        result["split_vs_nosplit"] = paired(named["loramerge"], named["loramerge-nosplit"], args.warmup)
    if "loramerge-bf16" in named:
        result["bf16_vs_float32"] = paired(named["loramerge-bf16"], named["loramerge"], args.warmup)
    if "loramerge-task" in named:
        result["joint_over_task"] = joint_cost(named["loramerge"], named["loramerge-task"], args.warmup)
    return result


def machine(before: str | None) -> dict[str, Any]:
    def git(*command: str) -> str:
        return subprocess.run(["git", *command], capture_output=True, text=True, cwd=ROOT).stdout.strip()

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model_name = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    return {
        "cpu": model_name,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git("rev-parse", "--short", "HEAD"),
        "loramerge_uncommitted": bool(git("status", "--porcelain", "loramerge", "bench")),
        "before": before,
        "load_average_at_start": os.getloadavg(),
    }


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores, torch {results['machine']['torch']}; "
        f"{results['machine']['date']}, commit {results['machine']['commit']}; {results['steps']} steps, first {results['warmup']} dropped.",
        "",
        "| case | side | tokens/s | median step s | VmHWM MiB | CUDA peak MiB | first loss |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case in results["cases"]:
        for label, side in case["sides"].items():
            lines.append(
                f"| {case['case']} | {label} | {side['tokens_per_second']:.0f} | {side['median_step_seconds']:.2f} | "
                f"{side['vmhwm_mib']:.0f} | {side['cuda_peak_mib'] or 0:.0f} | {side['first_loss']:.6f} |"
            )
    lines += ["", "| case | comparison | median ratio (quartiles) | pairs | memory ratio |", "|---|---|---:|---:|---:|"]
    for case in results["cases"]:
        # (result key, the compared sides, how the row names the comparison)
        comparisons = [(f"loramerge_vs_{other}", "loramerge", other, f"loramerge / {other}") for other in ("trainer", "before")]
        comparisons += [
            ("checkpointing_vs_trainer", "loramerge-checkpointing", "trainer", "loramerge with gradient checkpointing / trainer"),
            ("split_vs_nosplit", "loramerge", "loramerge-nosplit", "length split / no split"),
            ("bf16_vs_float32", "loramerge-bf16", "loramerge", "bf16 / float32"),
        ]
        for key, first, second, label in comparisons:
            if key in case:
                ratio = case[key]
                memory = case["sides"][first]["vmhwm_mib"] / case["sides"][second]["vmhwm_mib"]
                lines.append(
                    f"| {case['case']} | {label} tokens/s | {ratio['median']:.3f} "
                    f"({ratio['quartiles'][0]:.3f}-{ratio['quartiles'][1]:.3f}) | {ratio['pairs']} | {memory:.3f} |"
                )
        if "joint_over_task" in case:
            joint = case["joint_over_task"]
            lines.append(f"| {case['case']} | joint step / task step time | {joint['median']:.3f} | {joint['pairs']} | |")
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default=",".join(c.name for c in CASES), help="comma-separated case names")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per side")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of the timing")
    parser.add_argument("--before", default=None, help="also run loramerge at this commit (a git worktree) as a side")
    parser.add_argument("--name", default="train", help="output file stem in bench/out/")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides train")
    parser.add_argument("--precision", choices=["no", "bf16"], default="no", help="bf16: autocast on both sides (GPU)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    chosen = [c for c in CASES if c.name in args.cases.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    data = build_data(OUT / "train-data")
    results: dict[str, Any] = {"machine": machine(args.before), "steps": args.steps, "warmup": args.warmup, "cases": []}
    work = OUT / f"{args.name}-work"  # each side's output and .stderr; kept for a look after a failure
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    try:
        for case in chosen:
            print(f"case {case.name}: {', '.join(case.sides)}", flush=True)
            results["cases"].append(run_case(case, data, args, work))
            (OUT / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            print(markdown({**results, "cases": results["cases"][-1:]}), flush=True)
    finally:
        if args.before:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(work / f"loramerge-{args.before}")], cwd=ROOT, check=False
            )
    (OUT / f"{args.name}.md").write_text(markdown(results), encoding="utf-8")
    print(markdown(results))


if __name__ == "__main__":
    main()
