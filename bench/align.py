"""Does an alignment adapter lift cross-lingual retrieval? Before/after on held-out gettext pairs.

    .venv/bin/python bench/align.py [--model bundled:gemma-3-270m] [--steps 400] [--quick]

1. extracts multiway en->{fr,de,es,ru,zh_CN,ja} pairs from the machine's gettext catalogs;
2. trains an alignment adapter at layer round(L/2) on train-split pairs of fr, de, es ONLY;
3. probes base and adapter on test-split sentences of all seven languages;
4. reports accuracy at the aligned layer for directions among the aligned languages (en, fr, de, es)
   and for directions touching a language never seen in alignment (ru, zh_CN, ja).
Writes bench/out/align/summary.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import yaml
from common import run_loramerge

OUT = Path("bench/out/align")
ALIGNED = {"en", "fr", "de", "es"}
UNSEEN = {"ru", "zh_CN", "ja"}


def training_pairs(split: Path, languages: set[str], limit: int) -> Path:
    rows = [json.loads(line) for line in split.read_text(encoding="utf-8").splitlines()]
    chosen = [row for row in rows if row["target_lang"] in languages][:limit]
    path = OUT / "align-train.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in chosen), encoding="utf-8")
    return path


def group_average(directions: dict[str, dict[str, float]], keep: Callable[[str, str], bool], score: str) -> float:
    chosen = [d[score] for name, d in directions.items() if keep(*name.split("->"))]
    return sum(chosen) / len(chosen)


def summarise(probe: dict, layer: int) -> dict[str, dict[str, float]]:
    summary = {}
    for variant, result in probe["variants"].items():
        directions = result["layers"][str(layer)]["directions"]
        summary[variant] = {
            "aligned": group_average(directions, lambda a, b: a in ALIGNED and b in ALIGNED, "margin"),
            "unseen": group_average(directions, lambda a, b: a in UNSEEN or b in UNSEEN, "margin"),
            "all": result["layers"][str(layer)]["average"]["margin"],
        }
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="bundled:gemma-3-270m")
    parser.add_argument("--layer", type=int, default=None, help="default: train-align's, round(L/2) (9 on Gemma-3-270M)")
    parser.add_argument("--steps", type=int, default=400, help="150 steps gave +13 points, 400 gave +50 (BENCHMARKS.md)")
    parser.add_argument("--pairs", type=int, default=3000, help="training pairs (fr, de, es)")
    parser.add_argument("--probe-sentences", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="20 steps, 50 probe sentences: a smoke run")
    parser.add_argument(
        "--keep-first-token",
        action="store_true",
        help="probe with the first token in the mean, as runs 1 and 2 were; training skips it, so on SmolLM2 this "
        "measures a fraction of the gain (BENCHMARKS.md, Default train-align on SmolLM2)",
    )
    options = parser.parse_args()
    if options.quick:
        options.steps, options.probe_sentences = 20, 50
    OUT.mkdir(parents=True, exist_ok=True)
    times = {
        "extract": run_loramerge(
            "data", "gettext", "--langs", "fr,de,es,ru,zh_CN,ja", "--multiway", "--out", str(OUT / "multi.jsonl"), "--overwrite"
        )
    }
    pairs = training_pairs(OUT / "multi-train.jsonl", {"fr", "de", "es"}, options.pairs)
    times["train_align"] = run_loramerge(
        "train-align",
        "--model",
        options.model,
        "--pairs",
        str(pairs),
        *(["--layer", str(options.layer)] if options.layer is not None else []),
        "--max-steps",
        str(options.steps),
        "--set",
        "batch_size=16",
        "--set",
        "log_every=10",
        "--set",
        "optimizer.warmup_ratio=0.1",
        "--out",
        str(OUT / "adapter"),
        "--overwrite",
    )
    times["probe"] = run_loramerge(
        "probe",
        "--model",
        options.model,
        "--adapter",
        f"align={OUT / 'adapter'}",
        "--pairs",
        str(OUT / "multi-test.jsonl"),
        "--max-sentences",
        str(options.probe_sentences),
        # the pooling training used (skip), unless asked for runs 1 and 2's (keep: the CLI's default until 2026-11-25)
        "--keep-first-token" if options.keep_first_token else "--skip-first-token",
        "--out",
        str(OUT / "probe"),
        "--overwrite",
    )
    probe = json.loads((OUT / "probe" / "probe.json").read_text())
    layer = yaml.safe_load((OUT / "adapter" / "recipe.yaml").read_text())["align"]["layer"]
    summary = {
        "layer": layer,
        "keep_first_token": options.keep_first_token,
        "steps": options.steps,
        "training_pairs": options.pairs,
        "seconds": times,
        "accuracy": summarise(probe, layer),
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    base, adapter = summary["accuracy"]["base"], summary["accuracy"]["align"]
    print(f"\n| directions at layer {layer} | base | aligned adapter | gain (points) |\n|---|---|---|---|")
    for group in ("aligned", "unseen", "all"):
        print(f"| {group} | {base[group]:.3f} | {adapter[group]:.3f} | {100 * (adapter[group] - base[group]):+.1f} |")
    print(f"\nseconds: {times}")


if __name__ == "__main__":
    main()
