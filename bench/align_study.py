"""Which alignment recipe raises held-out retrieval, from the first steps on? (issue 14, part 2; dev split only)

    .venv/bin/python bench/align_study.py [--settings base,lr2e-4,...] [--steps 100] [--eval-every 20]

Trains the demo's alignment adapter (recipes/demo/align.yaml: Gemma-3-270M, en <-> ru, zh_CN, ja UI sentences,
iso_* catalogs left out) once per setting below, each a list of `--set` overrides, and logs margin retrieval
at the aligned layer every --eval-every steps on DEV-split multiway sentences of ru, zh_CN, ja and ko (Korean
has no alignment data). Settings are compared on the dev split only; the test split is never read here.
Writes bench/out/align-study/study.json and prints one markdown table row per setting. Resumable: a setting
whose metrics are already in the output folder is not trained again.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

OUT = Path("bench/out/align-study")
ALIGNED = ("ru", "zh_CN", "ja")
UNALIGNED = ("ko",)
RECIPE = "recipes/demo/align.yaml"

# name -> overrides of recipes/demo/align.yaml; each tests one hypothesis of issue 14 (BENCHMARKS.md, study)
SETTINGS: dict[str, list[str]] = {
    "demo": [],
    "lr2e-4": ["optimizer.learning_rate=2e-4"],
    "lr5e-4": ["optimizer.learning_rate=5e-4"],
    "warmup10": ["optimizer.warmup_ratio=0.1"],
    "tau0.05": ["align.temperature=0.05"],
    "tau0.02": ["align.temperature=0.02"],
    "symmetric": ["align.symmetric=true"],
    "layer11": ["align.layer=11"],
    "center": ["align.center=true"],
    "center-100-steps": ["align.center=true", "max_steps=100"],
    "center-layer11": ["align.center=true", "align.layer=11"],
    "center-symmetric": ["align.center=true", "align.symmetric=true"],
    "center-tau0.05": ["align.center=true", "align.temperature=0.05"],
    "center-lr2e-4": ["align.center=true", "optimizer.learning_rate=2e-4"],
}


def run(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "loramerge", *args], check=True)
    return time.perf_counter() - start


def first_groups(multiway: Path, groups: int, out: Path) -> Path:
    """The first `groups` English sentences of a multiway file with all their translations."""
    rows = [json.loads(line) for line in multiway.read_text(encoding="utf-8").splitlines()]
    keep = list(dict.fromkeys(row["source"] for row in rows))[:groups]
    chosen = set(keep)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["source"] in chosen), encoding="utf-8")
    return out


def build_data(groups: int) -> tuple[Path, Path]:
    data = OUT / "data"
    pairs, probe = data / "pairs.jsonl", data / "probe.jsonl"
    if not (data / "pairs-train.jsonl").is_file():
        data.mkdir(parents=True, exist_ok=True)
        run("data", "gettext", "--langs", ",".join(ALIGNED), "--exclude", "iso_*", "--out", str(pairs), "--overwrite")
        langs = ",".join((*ALIGNED, *UNALIGNED))
        run("data", "gettext", "--langs", langs, "--multiway", "--exclude", "iso_*", "--out", str(probe), "--overwrite")
    dev = first_groups(data / "probe-dev.jsonl", groups, data / f"probe-dev-{groups}.jsonl")
    return data / "pairs-train.jsonl", dev


def curve(metrics: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [
        {key: value for key, value in row.items() if key == "step" or key.startswith("eval_retrieval")}
        for row in rows
        if "eval_retrieval" in row and not row.get("final")  # the final row repeats the last step's
    ]


def train(name: str, overrides: list[str], pairs: Path, dev: Path, steps: int, every: int) -> dict[str, object]:
    folder = OUT / name
    result = folder / "curve.json"
    if result.is_file():
        return json.loads(result.read_text())
    settings = [f"eval_pairs={dev}", f"eval_every={every}", f"max_steps={steps}", "log_every=10", *overrides]
    args = ["train-align", "--recipe", RECIPE, "--pairs", str(pairs), "--out", str(folder / "adapter"), "--overwrite"]
    for setting in settings:
        args += ["--set", setting]
    seconds = run(*args)
    # the run folder is removed on success; the adapter keeps the final metrics, the curve is in the log copy
    metrics = folder / "adapter" / "metrics.jsonl"
    entry = {"overrides": overrides, "seconds": round(seconds, 1), "curve": curve(metrics)}
    result.write_text(json.dumps(entry, indent=1) + "\n")
    return entry


def group_mean(row: dict[str, float], languages: tuple[str, ...]) -> float:
    return sum(row[f"eval_retrieval_{lang}"] for lang in languages) / len(languages)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--dev-groups", type=int, default=100, help="dev sentences per language (x4 languages)")
    options = parser.parse_args()
    pairs, dev = build_data(options.dev_groups)
    study = {}
    for name in options.settings.split(","):
        study[name] = train(name, SETTINGS[name], pairs, dev, options.steps, options.eval_every)
    (OUT / "study.json").write_text(json.dumps(study, indent=1) + "\n")
    print("\n| setting | overrides | aligned (ru, zh_CN, ja) by step | ko (no alignment data) by step | seconds |")
    print("|---|---|---|---|---:|")
    for name, entry in study.items():
        rows = entry["curve"]
        aligned = " ".join(f"{100 * group_mean(r, ALIGNED):.1f}" for r in rows)
        unaligned = " ".join(f"{100 * group_mean(r, UNALIGNED):.1f}" for r in rows)
        print(f"| {name} | {' '.join(entry['overrides']) or '-'} | {aligned} | {unaligned} | {entry['seconds']} |")
    print(f"\nsteps: {' '.join(str(r['step']) for r in next(iter(study.values()))['curve'])}")


if __name__ == "__main__":
    main()
