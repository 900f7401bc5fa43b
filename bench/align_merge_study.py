"""Why a separately trained alignment adapter does not add transfer when merged, and what does (issue 34).

    .venv/bin/python bench/align_merge_study.py diagnose     # dev, seed 0: label priors, drift, block swaps
    .venv/bin/python bench/align_merge_study.py candidates   # dev, seed 0: alignment modules merged into task-only
    .venv/bin/python bench/align_merge_study.py test --seeds 0,1,2   # test items 90-188 of each label, read once
    .venv/bin/python bench/align_merge_study.py drift --seeds 0,1,2  # dev: each seed's alignment drift on English
    .venv/bin/python bench/align_merge_study.py unseen --seeds 0,1,2     # test, es and it: languages no study named
    .venv/bin/python bench/align_merge_study.py anywhere --seeds 0,1,2   # one module into other task adapters
    .venv/bin/python bench/align_merge_study.py STAGE --show             # a stage's saved tables again

The demo's settings throughout (recipes/demo/: task-only 100 steps, joint 150 micro-steps 2 : 1, alignment 60
steps at hidden_states[9], `precision: auto`), Gemma-3-270M, the topic task of bench/transfer_study.py (its data
folder is reused: the same splits). Seed 0's task-only and joint adapters are demo-dev's (the same recipe and seed).

Every variant, on dev and test, is scored by one forward pass per item (the prompt; the answer's first token is the label's
only token with Gemma-3's tokenizer):
- raw: the argmax over the whole vocabulary is the label's token (what greedy decoding answers first: on dev,
  task-only 44.1 and joint 47.9 on transfer, where `loramerge eval`'s exact match gave 44.13 and 47.98),
- prior-corrected: the argmax over the 6 label tokens of log p(label) - log prior(label), the prior being the
  variant's mean label distribution over the items of the same language (no gold labels used): a variant that
  only shifts which label it favours scores the same as without the shift.
Paired intervals: items (and seeds) resampled, bench/common.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from common import paired_intervals, prediction_rows, train_demo_variant, variant_comparison, variant_table
from iso_demo import FULL as ISO_PLAN  # the reference task: iso-codes, its languages and shipped recipes
from iso_demo import test_subset
from rich.console import Console

from loramerge.cli.support import quiet_libraries
from loramerge.data.records import TaskRecord, read_task_file
from loramerge.data.tokenization import prompt_and_answer_ids
from loramerge.demo.plan import FULL as PLAN
from loramerge.demo.run import working_directory
from loramerge.evaluate.evaluator import Evaluator
from loramerge.evaluate.generation import left_pad, length_batches
from loramerge.train.recipe import Mode

ALIGNED_LAYER = 9  # hidden_states[9]: the output of blocks 0-8; the alignment loss reaches no block above
BELOW, ABOVE = f"-{ALIGNED_LAYER - 1}", f"{ALIGNED_LAYER}-"  # merge rule layer ranges: blocks 0-8 and 9-17
TASK_DATA = "data/topics/train.jsonl"
PAIRS = "data/topics/align-train.jsonl"


# ---------------------------------------------------------------------------------------------- adapters


def seed_folder(seed: int) -> Path:
    return Path(f"align-merge/seed{seed}")


def task_adapter(seed: int) -> Path:
    return reused_or_trained(seed, "task", "task", {"data": TASK_DATA}, [])


def joint_adapter(seed: int) -> Path:
    return reused_or_trained(seed, "joint", "task", {"data": TASK_DATA, "pairs": PAIRS}, [])


def reused_or_trained(seed: int, recipe: str, mode: Mode, paths: dict[str, str], overrides: list[str]) -> Path:
    """demo-dev's adapter of this seed where it exists (bench/transfer_study.py demo-dev: the same recipe), else
    trained with recipes/demo/RECIPE.yaml."""
    out = seed_folder(seed) / recipe
    earlier = Path(f"demo-dev/100/seed{seed}/{recipe}")
    if not out.exists() and (earlier / "adapter_model.safetensors").is_file():
        shutil.copytree(earlier, out)
    return train_demo_variant(out, recipe, mode, PLAN, paths, [f"seed={seed}", *overrides])


def align_adapter(seed: int, name: str = "align", overrides: tuple[str, ...] = ()) -> Path:
    out = seed_folder(seed) / name
    return train_demo_variant(out, "align", "align", PLAN, {"pairs": PAIRS}, [f"seed={seed}", *overrides])


def merged(out: Path, sources: list[dict[str, Any]]) -> Path:
    """An exact (cat) merge of the sources (path, weight, optional layer rules), once."""
    from loramerge.merge.engine import merge_adapters

    if not (out / "adapter_model.safetensors").is_file():
        merge_adapters({"sources": sources, "method": "cat"}, out, overwrite=True)
    return out


def source(path: Path, weight: float = 1.0, zero: str | None = None) -> dict[str, Any]:
    """A merge source; zero: a layer range whose blocks this source does not contribute."""
    rules = [{"layers": zero, "weight": 0.0}] if zero else []
    return {"path": str(path), "weight": weight, "rules": rules}


# ---------------------------------------------------------------------------------------------- one pass


class LabelPass:
    """The base model with adapters by name (an Evaluator: its loading, adapter checks and precision); per item the
    label logits, the raw first-token answer and the last prompt position's hidden states at the aligned layer and
    the last layer."""

    def __init__(self, records: list[TaskRecord]) -> None:
        self.evaluator = Evaluator(PLAN.model, "exact", precision="auto")
        pairs = prompt_and_answer_ids(records, self.evaluator.tokenizer)
        self.prompts = [prompt for prompt, _ in pairs]
        self.gold = torch.tensor([answer[0] for _, answer in pairs])
        self.label_tokens = torch.tensor(sorted(set(self.gold.tolist())))
        self.languages = [record.lang for record in records]

    def add(self, name: str, path: Path) -> None:
        self.evaluator.add_adapter(name, path)

    @torch.inference_mode()
    def run(self, name: str) -> dict[str, torch.Tensor]:
        pad = self.evaluator.tokenizer.pad_token_id
        size = len(self.prompts)
        out = {"labels": torch.empty(size, len(self.label_tokens)), "top": torch.empty(size, dtype=torch.long)}
        with self.evaluator.active(name) as model:
            for batch in length_batches([len(p) for p in self.prompts], 32):
                input_ids, mask = left_pad([self.prompts[i] for i in batch], pad)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                result = model(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    logits_to_keep=1,
                    output_hidden_states=True,
                    use_cache=False,
                )
                logits = result.logits[:, -1].float()
                out["labels"][batch] = logits[:, self.label_tokens]
                out["top"][batch] = logits.argmax(-1)
                for key, layer in (("aligned", ALIGNED_LAYER), ("last", -1)):
                    states = result.hidden_states[layer][:, -1].float()
                    out.setdefault(key, torch.empty(size, states.shape[-1]))[batch] = states
        return out


# ---------------------------------------------------------------------------------------------- pure scores


def prior_corrected(label_logits: torch.Tensor, languages: list[str]) -> torch.Tensor:
    """argmax_l log p(l) - log prior_lang(l): the prior is the mean of p over the items of the same language
    (p: softmax over the label tokens only). Returns the chosen label index per item."""
    log_p = label_logits.log_softmax(-1)
    corrected = torch.empty_like(log_p)
    for lang in set(languages):
        rows = torch.tensor([i for i, item_lang in enumerate(languages) if item_lang == lang])
        prior = log_p[rows].exp().mean(0).log()
        corrected[rows] = log_p[rows] - prior
    return corrected.argmax(-1)


def relative_drift(states: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per item ||h - h_ref|| / ||h_ref||."""
    return (states - reference).norm(dim=-1) / reference.norm(dim=-1)


def item_scores(
    found: dict[str, torch.Tensor], gold: torch.Tensor, label_tokens: torch.Tensor, languages: list[str]
) -> dict[str, torch.Tensor]:
    """Per item 100 / 0: raw (whole-vocabulary argmax = the label) and prior-corrected."""
    gold_index = (label_tokens[None, :] == gold[:, None]).float().argmax(-1)
    return {
        "raw": 100.0 * (found["top"] == gold).float(),
        "corrected": 100.0 * (prior_corrected(found["labels"], languages) == gold_index).float(),
    }


def label_skew(counts: dict[str, int]) -> float:
    """Total variation distance of the predicted labels from the uniform: the dev and test subsets hold every label
    equally often, so 0 is a variant whose predictions carry no prior of their own."""
    total = sum(counts.values())
    return sum(abs(n / total - 1 / len(counts)) for n in counts.values()) / 2


def label_counts(found: dict[str, torch.Tensor], label_names: list[str], rows: list[int]) -> dict[str, int]:
    """How often each label is the variant's restricted argmax over the given items."""
    chosen = found["labels"][rows].argmax(-1)
    return {name: int((chosen == index).sum()) for index, name in enumerate(label_names)}


# ---------------------------------------------------------------------------------------------- stages


DEV_ITEMS: int | None = None  # --items: the first N dev records only (a smoke run of the script)


def dev_records() -> list[TaskRecord]:
    return read_task_file(Path("data/topics/dev.jsonl"))[:DEV_ITEMS]


def passes(
    records: list[TaskRecord], variants: dict[str, Path], console: Console
) -> tuple[LabelPass, dict[str, dict[str, torch.Tensor]]]:
    """One forward pass per item and variant."""
    runner = LabelPass(records)
    found: dict[str, dict[str, torch.Tensor]] = {}
    for name, path in variants.items():
        started = time.perf_counter()
        runner.add(name, path)
        found[name] = runner.run(name)
        console.print(f"{name}: {len(records)} items in {time.perf_counter() - started:.0f} s")
    return runner, found


def groups_of(records: list[TaskRecord]) -> dict[str, list[int]]:
    roles = {"en": PLAN.supervised, "transfer": PLAN.transfer, "aligned": PLAN.aligned, "unaligned": PLAN.unaligned}
    groups = {group: [i for i, r in enumerate(records) if r.lang in langs] for group, langs in roles.items()}
    return groups | {lang: [i for i, r in enumerate(records) if r.lang == lang] for lang in PLAN.transfer}


def summary(
    records: list[TaskRecord],
    runs: list[tuple[LabelPass, dict[str, dict[str, torch.Tensor]]]],
    baseline: str,
    groups: dict[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Per seed's pass (runs): scores per group with paired seed x item intervals against the baseline, label
    counts and drift of the aligned / last layer's states from the baseline's (seed 0's run for those two)."""
    runner, first = runs[0]
    variants = list(first)
    name_of = dict(zip(runner.gold.tolist(), (record.completion for record in records), strict=True))
    label_names = [name_of[token] for token in runner.label_tokens.tolist()]
    groups = groups or groups_of(records)
    counted = [group for group in ("en", "transfer") if groups.get(group)]
    result: dict[str, Any] = {"label_names": label_names, "items": len(records), "seeds": len(runs)}
    others = [name for name in variants if name != baseline]
    scored = [
        {name: item_scores(f, runner.gold, runner.label_tokens, runner.languages) for name, f in found.items()}
        for _, found in runs
    ]
    for kind in ("raw", "corrected"):
        per_seed = [{name: dict(enumerate(seed[name][kind].tolist())) for name in variants} for seed in scored]
        result[kind] = {g: paired_intervals(per_seed, rows, variants, baseline, others) for g, rows in groups.items()}
    result["per_seed_raw"] = {
        name: {g: [round(float(seed[name]["raw"][rows].mean()), 2) for seed in scored] for g, rows in groups.items()}
        for name in variants
    }
    result["label_counts"] = {name: {g: label_counts(f, label_names, groups[g]) for g in counted} for name, f in first.items()}
    result["drift"] = {
        name: {
            f"{layer} {g}": round(float(relative_drift(f[layer][groups[g]], first[baseline][layer][groups[g]]).mean()), 4)
            for layer in ("aligned", "last")
            for g in counted
        }
        for name, f in first.items()
        if name != baseline
    }
    return result


def diagnose(console: Console) -> dict[str, Any]:
    seed = 0
    folder = seed_folder(seed)
    task, joint, align = task_adapter(seed), joint_adapter(seed), align_adapter(seed)
    variants = {
        "task": task,
        "joint": joint,
        "merged": merged(folder / "merged", [source(task), source(align)]),
        "joint<9 + task>=9": merged(folder / "swap-joint-below", [source(joint, zero=ABOVE), source(task, zero=BELOW)]),
        "task<9 + joint>=9": merged(folder / "swap-joint-above", [source(task, zero=ABOVE), source(joint, zero=BELOW)]),
        "joint + align": merged(folder / "joint-align", [source(joint), source(align)]),
    }
    records = dev_records()
    return summary(records, [passes(records, variants, console)], "task")


# ---------------------------------------------------------------------------------------------- candidates

UI_PAIRS = "data/ui-pairs.jsonl"  # UI pairs outside the topic catalogs, dev and test text dropped (transfer_study.py)


def iso_adapters(seed: int) -> tuple[Path, Path]:
    """Task-only and joint adapters of the iso-codes task (names -> ISO codes, English and French), the joint one
    aligned on leak-free UI pairs: the reference task of an AdaMergeX-style delta (joint - task-only)."""
    from loramerge.data.isocodes import build_iso_task

    if not Path("iso/task/train.jsonl").is_file():
        build_iso_task(list(ISO_PLAN.supervised), list(ISO_PLAN.transfer), Path("iso/task"))
    data = {"data": "iso/task/train.jsonl"}
    common = [f"seed={seed}", "precision=auto"]
    task = train_demo_variant(seed_folder(seed) / "iso-task", "task", "task", ISO_PLAN, data, common)
    joint = train_demo_variant(seed_folder(seed) / "iso-joint", "joint", "task", ISO_PLAN, data | {"pairs": UI_PAIRS}, common)
    return task, joint


def long_align(seed: int) -> Path:
    return align_adapter(seed, "align-240", ("max_steps=240",))


def iso_delta(seed: int, zero: str | None = None) -> list[dict[str, Any]]:
    task, joint = iso_adapters(seed)
    return [source(joint, 1.0, zero), source(task, -1.0, zero)]


# name -> the merge sources added to the task-only adapter. No candidate uses topic-task data: the alignment
# adapters see only parallel sentences, the deltas another task's training.
CANDIDATES: dict[str, Callable[[int], list[dict[str, Any]]]] = {
    "align@1": lambda seed: [source(align_adapter(seed))],  # the demo's merge
    "align@0.5": lambda seed: [source(align_adapter(seed), 0.5)],
    "align-240@1": lambda seed: [source(long_align(seed))],  # 4x the alignment steps (3,840 pairs)
    "align-240@0.5": lambda seed: [source(long_align(seed), 0.5)],
    "iso-delta": iso_delta,  # AdaMergeX-style: (joint - task-only) of the iso-codes task
    "iso-delta<9": lambda seed: iso_delta(seed, zero=ABOVE),  # the same, blocks 0-8 only
}
ENGLISH_FLOOR = -1.0  # the guards, applied on dev: English within 1 point, aligned languages not below


def choose(result: dict[str, Any]) -> tuple[str, bool]:
    """Fixed before any candidate was scored: the largest raw dev transfer gain among the candidates whose English
    change >= -1 and aligned change >= 0; when none passes both guards, the largest gain overall (flagged)."""
    raw = result["raw"]

    def gain(name: str, group: str) -> float:
        return float(raw[group][f"{name} - task"]["mean"])

    guarded = [n for n in CANDIDATES if gain(n, "en") >= ENGLISH_FLOOR and gain(n, "aligned") >= 0]
    pool = guarded or list(CANDIDATES)
    return max(pool, key=lambda name: gain(name, "transfer")), bool(guarded)


def with_task(seed: int, name: str, task: Path, extra: list[dict[str, Any]]) -> Path:
    return merged(seed_folder(seed) / f"merged-{name}", [source(task), *extra])


def candidates(console: Console) -> dict[str, Any]:
    seed = 0
    task = task_adapter(seed)
    variants = {"task": task} | {name: with_task(seed, name, task, make(seed)) for name, make in CANDIDATES.items()}
    records = dev_records()
    result = summary(records, [passes(records, variants, console)], "task")
    result["chosen"], result["guards_met"] = choose(result)
    return result


# ---------------------------------------------------------------------------------------------- test

TEST_START, TEST_PER_LABEL = 90, 99  # items 90-188 of each label: never read (the study read 0-89, the demo 0-59)


def compared(seed: int, chosen: str) -> dict[str, Path]:
    """What every test read scores: task-only, joint, the demo's merge and the candidate chosen on dev."""
    task = task_adapter(seed)
    variants = {
        "task": task,
        "joint": joint_adapter(seed),
        "align@1": with_task(seed, "align@1", task, CANDIDATES["align@1"](seed)),
    }
    if chosen != "align@1":
        variants[f"chosen {chosen}"] = with_task(seed, chosen, task, CANDIDATES[chosen](seed))
    return variants


def test(seeds: list[int], console: Console) -> dict[str, Any]:
    """Test, read once: task-only, joint, the demo's merge, the candidate chosen on dev, and task-only merged
    with the next seed's alignment adapter (an alignment module trained once, merged into a task adapter of
    another run)."""
    from loramerge.data.topic_subsets import first_per_label

    chosen = json.loads(Path("align-merge-candidates.json").read_text())["chosen"]
    data = first_per_label(Path("data/topics/test.jsonl"), TEST_PER_LABEL, Path("data/test-90-189.jsonl"), TEST_START)
    records = read_task_file(data)
    runs = []
    for seed in seeds:
        task = task_adapter(seed)
        other = (seed + 1) % 3
        variants = compared(seed, chosen) | {
            "align@1 of another seed": with_task(seed, f"align-of-seed{other}", task, [source(align_adapter(other))]),
        }
        runs.append(passes(records, variants, console))
    result = summary(records, runs, "task")
    result["chosen_on_dev"] = chosen
    return result


UNSEEN = ("es", "it")  # languages no study or demo has named; each builds its own topic data (the splits are hashes
# of the English sentence, so no test sentence of theirs is a train sentence of the adapters)
UNSEEN_PER_LABEL = 60  # the first 60 test items a label: 360 a language, none read before in these languages


def unseen(seeds: list[int], console: Console) -> dict[str, Any]:
    """Test items in languages the study never named (no alignment pairs either), read once: does the merge's
    effect, or joint training's, reach them?"""
    from loramerge.data.topic_subsets import first_per_label
    from loramerge.data.topics import build_topic_task

    chosen = json.loads(Path("align-merge-candidates.json").read_text())["chosen"]
    rows = []
    for lang in UNSEEN:
        folder = Path(f"data/topics-{lang}")
        if not (folder / "test.jsonl").is_file():
            build_topic_task(list(PLAN.supervised), [lang], folder)
        subset = first_per_label(folder / "test.jsonl", UNSEEN_PER_LABEL, Path(f"data/test-{lang}-60.jsonl"))
        rows += [line for line in subset.read_text(encoding="utf-8").splitlines() if json.loads(line)["lang"] == lang]
    data = Path("data/test-unseen.jsonl")
    data.write_text("".join(line + "\n" for line in rows), encoding="utf-8")
    records = read_task_file(data)
    groups = {"transfer": list(range(len(records)))} | {
        lang: [i for i, r in enumerate(records) if r.lang == lang] for lang in UNSEEN
    }
    runs = []
    for seed in seeds:
        runs.append(passes(records, compared(seed, chosen), console))
    return summary(records, runs, "task", groups) | {"chosen_on_dev": chosen, "languages": list(UNSEEN)}


def anywhere(seeds: list[int], console: Console) -> dict[str, Any]:
    """Train once, merge anywhere. Topic test items 90-188: seed 0's chosen module merged into every seed's task-only
    adapter (one module, three task adapters it never saw). Iso-codes test (50 entities, read by earlier studies;
    nothing is chosen on it): the iso-codes task-only adapter with seed 0's topic alignment adapter merged in, and
    with the topic task's own (joint - task-only) delta of blocks 0-8, the chosen recipe run the other way round."""
    chosen = json.loads(Path("align-merge-candidates.json").read_text())["chosen"]
    module = CANDIDATES[chosen](0)
    records = read_task_file(Path("data/test-90-189.jsonl"))
    runs = []
    for seed in seeds:
        task = task_adapter(seed)
        variants = {"task": task, f"seed 0's {chosen}": with_task(seed, f"{chosen}-of-seed0", task, module)}
        runs.append(passes(records, variants, console))
    topic = summary(records, runs, "task")
    iso_task, _ = iso_adapters(0)
    topic_delta = [source(joint_adapter(0), 1.0, ABOVE), source(task_adapter(0), -1.0, ABOVE)]
    iso_variants = {
        "task": str(iso_task),
        "align@1": str(merged(seed_folder(0) / "iso-task+align", [source(iso_task), source(align_adapter(0))])),
        "topic-delta<9": str(merged(seed_folder(0) / "iso-task+topic-delta", [source(iso_task), *topic_delta])),
    }
    data = test_subset(Path("iso/task/test.jsonl"), 50, Path("iso/test-50.jsonl"))
    rows = prediction_rows(ISO_PLAN, data, Path("iso/eval-anywhere"), iso_variants, console, precision="auto")
    found = {v: {r["line"]: (r["lang"], float(r["score"])) for r in found} for v, found in rows.items()}
    iso = variant_comparison([found], ISO_PLAN, tuple(iso_variants))
    return {"topic": topic, "iso": iso, "chosen_on_dev": chosen}


def drift(seeds: list[int], console: Console) -> dict[str, Any]:
    """Dev, English only, per seed: how far the demo's merge moves the task adapter's states and its score."""
    records = dev_records()
    english = [record for record in records if record.lang in PLAN.supervised]
    result = {}
    for seed in seeds:
        task = task_adapter(seed)
        variants = {"task": task, "align@1": with_task(seed, "align@1", task, CANDIDATES["align@1"](seed))}
        groups = {"en": list(range(len(english)))}
        found = summary(english, [passes(english, variants, console)], "task", groups)
        result[str(seed)] = {"raw": found["raw"]["en"], "drift": found["drift"]}
    return result


def cell(entry: dict[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{entry['mean']:{sign}.1f} [{entry['low']:{sign}.1f}, {entry['high']:{sign}.1f}]"


def markdown_table(result: dict[str, Any], kind: str, baseline: str = "task") -> str:
    """One row per variant: its score per group and its paired difference from the baseline, the label skew."""
    scores = result[kind]
    groups = [g for g in ("en", "transfer", "aligned", "unaligned", *UNSEEN) if g in scores]
    header = ["variant", *groups, *(f"{g} - {baseline}" for g in groups), "skew (transfer)"]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name in result["label_counts"]:
        means = [f"{scores[g][name]['mean']:.1f}" for g in groups]
        gains = ["" if name == baseline else cell(scores[g][f"{name} - {baseline}"], signed=True) for g in groups]
        skew = f"{label_skew(result['label_counts'][name]['transfer']):.3f}"
        lines.append("| " + " | ".join([name, *means, *gains, skew]) + " |")
    return "\n".join(lines)


def print_table(result: dict[str, Any]) -> None:
    for kind in ("raw", "corrected"):
        print(f"\n{kind} ({result['items']} items, {result['seeds']} seed(s)):\n{markdown_table(result, kind)}")
    langs = [g for g in result["raw"] if g not in ("en", "transfer", "aligned", "unaligned")]
    for name in result["label_counts"] if langs else []:
        print(f"per language (raw), {name}: " + ", ".join(f"{g} {result['raw'][g][name]['mean']:.1f}" for g in langs))
    groups = " / ".join(next(iter(result["label_counts"].values())))
    print(f"\nlabel counts ({groups}), and their skew from the uniform (total variation):")
    for name, counts in result["label_counts"].items():
        print(f"  {name}: " + " / ".join(f"{c}" for c in counts.values()))
        print("    skew " + " / ".join(f"{label_skew(c):.3f}" for c in counts.values()))
    print("\ndrift from task-only (relative, last prompt position):")
    for name, drift_of in result["drift"].items():
        print(f"  {name}: {drift_of}")
    if "chosen" in result:
        print(f"\nchosen on dev: {result['chosen']}; guards met: {result['guards_met']}")


def show(stage: str, result: dict[str, Any]) -> None:
    """A stage's saved result as the tables BENCHMARKS.md quotes."""
    if stage == "drift":
        for seed, entry in result.items():
            if isinstance(entry, dict):
                print(
                    f"seed {seed}: English {cell(entry['raw']['task'])} -> {cell(entry['raw']['align@1'])}, "
                    f"change {cell(entry['raw']['align@1 - task'], signed=True)}; drift {entry['drift']['align@1']}"
                )
    elif stage == "anywhere":
        print_table(result["topic"])
        variants = tuple(next(iter(result["iso"].values())))[1:4]
        print(f"\niso-codes test:\n{variant_table(result['iso'], variants)}")
    else:
        print_table(result)


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("diagnose", "candidates", "test", "unseen", "drift", "anywhere"))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--out", type=Path, default=Path("bench/out/transfer"))
    parser.add_argument("--show", action="store_true", help="print the stage's saved results, run nothing")
    parser.add_argument("--items", type=int, default=None, help="the first N dev records only (a smoke run)")
    options = parser.parse_args()
    global DEV_ITEMS
    DEV_ITEMS = options.items
    console = Console(stderr=True)
    if options.show:
        show(options.stage, json.loads((options.out / f"align-merge-{options.stage}.json").read_text()))
        return
    started = time.perf_counter()
    with working_directory(options.out):
        if not Path(PAIRS).is_file():
            sys.exit(f"{options.out}/{PAIRS} is missing: run bench/transfer_study.py gap first (it builds the topic data)")
        seeds = [int(seed) for seed in options.seeds.split(",")]
        result = (
            {"diagnose": diagnose, "candidates": candidates}[options.stage](console)
            if options.stage in ("diagnose", "candidates")
            else {"test": test, "unseen": unseen, "drift": drift, "anywhere": anywhere}[options.stage](seeds, console)
        )
        result["seconds"] = round(time.perf_counter() - started)
        result["command"] = " ".join(sys.argv)
        Path(f"align-merge-{options.stage}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    show(options.stage, result)


if __name__ == "__main__":
    main()
