"""Which alignment recipe raises held-out retrieval, from the first steps on? (issues 14 and 21; dev split only)

    .venv/bin/python bench/align_study.py [--settings base,lr2e-4,...] [--steps 100] [--eval-every 20]
    .venv/bin/python bench/align_study.py --defaults smollm2 --settings defaults,...   # CLI defaults, no recipe

Trains an alignment adapter once per setting below, each a list of `--set` overrides, and logs margin retrieval
at the aligned layer every --eval-every steps on DEV-split multiway sentences of the aligned languages and of
languages with no alignment data. Two bases (`--defaults`):
- `demo` (default): recipes/isocodes/align.yaml, Gemma-3-270M, en <-> ru, zh_CN, ja UI sentences (iso_* catalogs
  left out); Korean unaligned. `--steps` caps every run.
- `smollm2` / `gemma`: `train-align` with NO recipe (the CLI's defaults: 1 epoch) on that bundled model, en <->
  fr, de, es UI pairs (700 a language, 2,100 in all: issue 21's setting); ru, ja unaligned.
Settings are compared on the dev split only; the test split is never read here. Writes
OUT/study.json and prints one markdown table row per setting. Resumable: a setting whose metrics are already
in the output folder is not trained again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from common import first_groups, run_loramerge


@dataclass(frozen=True)
class Base:
    """What every setting of one study shares: the model, the recipe (None: the CLI's defaults) and the languages."""

    out: Path
    recipe: str | None
    model: str | None
    aligned: tuple[str, ...]
    unaligned: tuple[str, ...]
    pairs_per_language: int | None  # None: every train pair the catalogs give


BASES = {
    "demo": Base(Path("bench/out/align-study"), "recipes/isocodes/align.yaml", None, ("ru", "zh_CN", "ja"), ("ko",), None),
    "smollm2": Base(
        Path("bench/out/align-defaults/smollm2"), None, "bundled:smollm2-135m", ("fr", "de", "es"), ("ru", "ja"), 700
    ),
    "gemma": Base(Path("bench/out/align-defaults/gemma"), None, "bundled:gemma-3-270m", ("fr", "de", "es"), ("ru", "ja"), 700),
}

# name -> overrides of recipes/isocodes/align.yaml; each tests one hypothesis of issue 14 (BENCHMARKS.md, "Alignment study")
SETTINGS: dict[str, list[str]] = {
    "defaults": [],
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


def some_pairs(pairs: Path, per_language: int, out: Path) -> Path:
    """`per_language` pairs of each target language, a fixed pseudo-random choice (a hash of the English side)."""
    rows = [json.loads(line) for line in pairs.read_text(encoding="utf-8").splitlines()]
    rows.sort(key=lambda row: hashlib.sha256(row["source"].encode()).hexdigest())
    taken: dict[str, int] = {}
    kept = []
    for row in rows:
        if taken.get(row["target_lang"], 0) < per_language:
            taken[row["target_lang"]] = taken.get(row["target_lang"], 0) + 1
            kept.append(row)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept), encoding="utf-8")
    return out


def build_data(base: Base, groups: int) -> tuple[Path, Path]:
    data = base.out / "data"
    pairs, probe = data / "pairs.jsonl", data / "probe.jsonl"
    if not (data / "pairs-train.jsonl").is_file():
        data.mkdir(parents=True, exist_ok=True)
        run_loramerge(
            "data", "gettext", "--langs", ",".join(base.aligned), "--exclude", "iso_*", "--out", str(pairs), "--overwrite"
        )
        langs = ",".join((*base.aligned, *base.unaligned))
        run_loramerge("data", "gettext", "--langs", langs, "--multiway", "--exclude", "iso_*", "--out", str(probe), "--overwrite")
    dev = first_groups(data / "probe-dev.jsonl", groups, data / f"probe-dev-{groups}.jsonl")
    train_pairs = data / "pairs-train.jsonl"
    if base.pairs_per_language is not None:
        train_pairs = some_pairs(train_pairs, base.pairs_per_language, data / f"pairs-train-{base.pairs_per_language}.jsonl")
    return train_pairs, dev


def curve(metrics: Path) -> list[dict[str, float]]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [
        {key: value for key, value in row.items() if key == "step" or key.startswith("eval_retrieval")}
        for row in rows
        if "eval_retrieval" in row and not row.get("final")  # the final row repeats the last step's
    ]


def train(base: Base, name: str, pairs: Path, dev: Path, steps: int | None, every: int) -> dict[str, object]:
    folder = base.out / name
    result = folder / "curve.json"
    if result.is_file():
        return json.loads(result.read_text())
    overrides = SETTINGS[name]
    settings = [f"eval_pairs={dev}", f"eval_every={every}", "log_every=10", *overrides]
    if steps is not None:
        settings.insert(0, f"max_steps={steps}")
    args = ["train-align", "--pairs", str(pairs), "--out", str(folder / "adapter"), "--overwrite"]
    args += ["--recipe", base.recipe] if base.recipe else ["--model", str(base.model)]
    for setting in settings:
        args += ["--set", setting]
    seconds = run_loramerge(*args)
    # the run folder is removed on success; the adapter keeps the final metrics, the curve is in the log copy
    metrics = folder / "adapter" / "metrics.jsonl"
    entry = {"overrides": overrides, "seconds": round(seconds, 1), "curve": curve(metrics)}
    result.write_text(json.dumps(entry, indent=1) + "\n")
    return entry


def probe_test(base: Base, name: str, sentences: int) -> dict[str, dict[str, float]]:
    """Held-out retrieval measured apart from training: `loramerge probe` on TEST-split multiway sentences, base
    and adapter at the adapter's layer (read from its recipe.yaml), margin and cosine, en <-> X averaged per X."""
    import yaml

    folder = base.out / name
    adapter = folder / "adapter"
    layer = yaml.safe_load((adapter / "recipe.yaml").read_text())["align"]["layer"]
    out = folder / "probe-test"
    if not (out / "probe.json").is_file():
        data = base.out / "data"
        pairs = first_groups(data / "probe-test.jsonl", sentences, data / f"probe-test-{sentences}.jsonl")
        args = ["probe", "--model", str(base.model), "--pairs", str(pairs), "--adapter", f"align={adapter}"]
        run_loramerge(*args, "--layers", str(layer), "--out", str(out), "--overwrite")
    variants = json.loads((out / "probe.json").read_text())["variants"]
    result: dict[str, dict[str, float]] = {}
    for variant, scored in variants.items():
        directions = scored["layers"][str(layer)]["directions"]
        for score in ("margin", "cosine"):
            per_language = {
                lang: (directions[f"en->{lang}"][score] + directions[f"{lang}->en"][score]) / 2
                for lang in (*base.aligned, *base.unaligned)
            }
            result[f"{variant} {score}"] = {"layer": layer, **per_language}
    return result


def group_mean(per_language: dict[str, float], languages: tuple[str, ...], prefix: str = "") -> float:
    """Mean over languages of per_language[prefix + language] (prefix 'eval_retrieval_' for a training-log row)."""
    return sum(per_language[f"{prefix}{lang}"] for lang in languages) / len(languages)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--defaults", choices=tuple(BASES), default="demo", help="what every setting shares")
    parser.add_argument("--settings", default=",".join(SETTINGS))
    parser.add_argument("--steps", type=int, default=None, help="cap every run (default: 100 on demo, 1 epoch otherwise)")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--dev-groups", type=int, default=100, help="dev sentences per language")
    parser.add_argument("--test-sentences", type=int, default=200, help="test-split probe sentences per language")
    options = parser.parse_args()
    base = BASES[options.defaults]
    steps = options.steps if options.steps is not None or base.recipe is None else 100
    pairs, dev = build_data(base, options.dev_groups)
    study = {}
    for name in options.settings.split(","):
        study[name] = train(base, name, pairs, dev, steps, options.eval_every)
    aligned_names, unaligned_names = ", ".join(base.aligned), ", ".join(base.unaligned)
    print(
        f"\n| setting | overrides | aligned ({aligned_names}) by step | {unaligned_names} (no alignment data) by step | seconds |"
    )
    print("|---|---|---|---|---:|")
    for name, entry in study.items():
        rows = entry["curve"]
        aligned = " ".join(f"{100 * group_mean(r, base.aligned, 'eval_retrieval_'):.1f}" for r in rows)
        unaligned = " ".join(f"{100 * group_mean(r, base.unaligned, 'eval_retrieval_'):.1f}" for r in rows)
        print(f"| {name} | {' '.join(entry['overrides']) or '-'} | {aligned} | {unaligned} | {entry['seconds']} |")
    print(f"\nsteps: {' '.join(str(r['step']) for r in next(iter(study.values()))['curve'])}")
    if base.recipe is None:  # the defaults bases: the same question on the test split, measured by `loramerge probe`
        print(f"\n| setting | test probe, {options.test_sentences} sentences | aligned ({aligned_names}) | {unaligned_names} |")
        print("|---|---|---:|---:|")
        for name in study:
            probed = probe_test(base, name, options.test_sentences)
            study[name]["probe_test"] = probed
            for score in ("margin", "cosine"):
                before, after = probed[f"base {score}"], probed[f"align {score}"]
                cells = [
                    f"{100 * group_mean(before, langs):.1f} -> {100 * group_mean(after, langs):.1f}"
                    for langs in (base.aligned, base.unaligned)
                ]
                print(f"| {name} | {score}, layer {before['layer']} | " + " | ".join(cells) + " |")
    (base.out / "study.json").write_text(json.dumps(study, indent=1) + "\n")


if __name__ == "__main__":
    main()
