"""The iso-codes task as the demo ran it before issue 33, kept for the benchmarks that study it (quality.py,
merge_quality.py, iso_diagnosis.py): the plans, the data and the shipped recipes in recipes/isocodes/. Bench
scripts import this module and common.py, never each other.

Data: the iso-codes task (train: English and French names only; test: the same entities in every language) and
gettext UI sentence pairs en <-> ru, zh_CN, ja for alignment (iso_* catalogs left out, so alignment data and
task come from different domains; Korean gets no alignment data at all).
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from loramerge.data.corpora import FilterSettings, extract_gettext
from loramerge.data.isocodes import build_iso_task
from loramerge.data.summaries import print_extraction, print_iso_task
from loramerge.demo.plan import QUICK as DEMO_QUICK
from loramerge.demo.plan import DemoPlan

ISO = dict(supervised=("en", "fr"), aligned=("ru", "zh_CN", "ja"), unaligned=("ko",), recipes="isocodes")
TEST_ENTITIES = 50  # x 6 languages x 3 variants = 900 generations
# max_new_tokens 10: the longest answer, {"currency": "XAF"}, is 7 tokens with EOS
FULL = DemoPlan(model="bundled:gemma-3-270m", max_new_tokens=10, **ISO)  # type: ignore[arg-type]
# The demo's quick variant (SmolLM2, a few steps) on this task: a smoke run of the bench scripts.
QUICK = replace(DEMO_QUICK, max_new_tokens=10, **ISO)  # type: ignore[arg-type]


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
    test_subset(Path("data/task/test.jsonl"), TEST_ENTITIES, Path("data/task/test-demo.jsonl"))
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
