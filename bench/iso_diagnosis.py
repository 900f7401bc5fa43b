"""Why the iso-codes task does not transfer better with alignment (issue 21, step 1): knowledge or skill?

    .venv/bin/python bench/iso_diagnosis.py [--seed 0] [--out bench/out/iso-diagnosis]

On the DEV split (57 entities x 6 languages), the demo's task adapter (recipes/isocodes/task.yaml) answers each
entity in every language. A transfer failure is an entity the adapter answers right in English and wrong in a
transfer language X. It is a knowledge failure when the BASE model cannot tie the name in X to the entity's
English name: margin retrieval of X's name among the English names of all dev entities misses it at every
layer from 1 to L-1 (the best the model's representations can do; its middle layer is where alignment acts).
The rest are skill failures: the model relates the names, the task adapter still does not answer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch
from common import prediction_rows, train_demo_variant
from iso_demo import FULL, build_data
from rich.console import Console

from loramerge.cli.support import quiet_libraries
from loramerge.demo.run import working_directory
from loramerge.evaluate.probe import layer_vectors
from loramerge.evaluate.retrieval import cosine_matrix, ratio_margin_matrix


def names_by_language(dev: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """lang -> entity id -> name (the prompt without its 'Name: ' frame)."""
    names: dict[str, dict[str, str]] = {}
    for row in dev:
        names.setdefault(row["lang"], {})[row["id"]] = row["prompt"].removeprefix("Name: ").removesuffix("\n")
    return names


def retrieved(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """[layers, N] bool: is query i's best margin-scored candidate candidate i, at each layer."""
    hits = []
    for layer in range(queries.shape[0]):
        scores = ratio_margin_matrix(cosine_matrix(queries[layer], candidates[layer]))
        hits.append(scores.argmax(dim=1) == torch.arange(scores.shape[0]))
    return torch.stack(hits)


def knowledge(names: dict[str, dict[str, str]], ids: list[str]) -> tuple[dict[str, dict[str, bool]], dict[str, list[float]]]:
    """lang -> id -> does the base model retrieve the English name from X's at any middle layer; and the
    per-layer retrieval accuracy X -> en."""
    from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec

    source = parse_model_spec(FULL.model)
    model, tokenizer = load_causal_lm(source), load_tokenizer(source)
    english = layer_vectors(model, tokenizer, [names["en"][i] for i in ids], skip_first=True)
    known: dict[str, dict[str, bool]] = {}
    curves: dict[str, list[float]] = {}
    for lang in FULL.transfer:
        vectors = layer_vectors(model, tokenizer, [names[lang][i] for i in ids], skip_first=True)
        hits = retrieved(vectors[1:-1], english[1:-1])  # block outputs 1 .. L-1, as --layer auto considers
        known[lang] = dict(zip(ids, hits.any(dim=0).tolist(), strict=True))
        curves[lang] = [round(100 * float(row.double().mean()), 1) for row in hits]
    return known, curves


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/out/iso-diagnosis"))
    options = parser.parse_args()
    console = Console(stderr=True)
    options.out.mkdir(parents=True, exist_ok=True)
    with working_directory(options.out):
        if not Path("data/task/dev.jsonl").is_file():
            build_data(FULL, console)
        train_demo_variant(
            Path(f"seed{options.seed}/task"), "task", "task", FULL, {"data": "data/task/train.jsonl"}, [f"seed={options.seed}"]
        )
        dev = [json.loads(line) for line in Path("data/task/dev.jsonl").read_text(encoding="utf-8").splitlines()]
        rows = prediction_rows(
            FULL, Path("data/task/dev.jsonl"), Path(f"seed{options.seed}/eval-dev"), {"task": f"seed{options.seed}/task"}, console
        )
        correct = {(dev[row["line"] - 1]["id"], row["lang"]): row["score"] > 0 for row in rows["task"]}
        names = names_by_language(dev)
        ids = sorted(names["en"])
        known, curves = knowledge(names, ids)
        result: dict[str, Any] = {"layers 1..L-1, X -> en margin retrieval of names": curves, "languages": {}}
        totals = {"transfer items": 0, "English wrong": 0, "right": 0, "knowledge failure": 0, "skill failure": 0}
        for lang in FULL.transfer:
            counts = dict.fromkeys(totals, 0)
            known_right = 0
            for entity in ids:
                counts["transfer items"] += 1
                if not correct[(entity, "en")]:
                    counts["English wrong"] += 1
                elif correct[(entity, lang)]:
                    counts["right"] += 1
                    known_right += known[lang][entity]
                elif known[lang][entity]:
                    counts["skill failure"] += 1
                else:
                    counts["knowledge failure"] += 1
            counts["names known among the right answers"] = known_right
            result["languages"][lang] = counts
            for key in totals:
                totals[key] += counts[key]
        result["all transfer languages"] = totals
        Path(f"diagnosis-seed{options.seed}.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result, indent=2))
    failures = totals["knowledge failure"] + totals["skill failure"]
    print(
        f"transfer failures (right in English, wrong in X): {failures}; knowledge {totals['knowledge failure']} "
        f"({100 * totals['knowledge failure'] / max(failures, 1):.0f} %), skill {totals['skill failure']}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
