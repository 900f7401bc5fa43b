"""`loramerge probe`: load a model (and adapters), score every layer, write probe.json and probe.png."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from loramerge.atomic import atomic_directory, output_dir_problem
from loramerge.data.records import read_pairs_file
from loramerge.errors import LoramergeError
from loramerge.evaluate.adapter_check import check_adapter_fits, resolve_and_check
from loramerge.evaluate.probe import check_enough_sentences, layer_vectors, score_layers, sentence_table
from loramerge.evaluate.run import parse_adapter_specs
from loramerge.models.layer_exit import num_decoder_layers
from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec
from loramerge.output_lock import output_lock


@dataclass(frozen=True)
class ProbeSettings:
    model: str
    pairs: Path
    out: Path
    adapters: tuple[str, ...] = ()
    languages: tuple[str, ...] | None = None
    layers: str = "all"
    skip_first_token: bool = True  # the alignment loss's default pooling (BENCHMARKS.md, "Alignment pooling")
    max_sentences: int | None = 300  # per language; 300 x 7 languages takes ~1 min on 2 cores at 270M
    batch_size: int = 32
    overwrite: bool = False


def parse_layers(text: str, num_layers: int) -> list[int]:
    """'all' -> 0..L; '4,8,12' -> those (hidden_states indices, 0 = embeddings)."""
    if text == "all":
        return list(range(num_layers + 1))
    try:
        layers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise LoramergeError(f"--layers {text!r}: expected 'all' or comma-separated layer numbers") from None
    bad = [layer for layer in layers if not 0 <= layer <= num_layers]
    if not layers or bad:
        raise LoramergeError(f"--layers {text!r}: layers must be between 0 and {num_layers} for this model")
    return layers


@contextmanager
def variant(model: Any, name: str | None) -> Iterator[None]:
    """The base model (adapters disabled) when name is None, else that adapter."""
    if name is None:
        with model.disable_adapter() if hasattr(model, "disable_adapter") else nullcontext():
            yield
        return
    model.set_adapter(name)
    yield


def print_summary(results: dict[str, Any], console: Console) -> None:
    table = Table("layer", *results["variants"], title="average top-1 retrieval accuracy (margin)")
    layers = next(iter(results["variants"].values()))["layers"]
    for layer in layers:
        table.add_row(layer, *[f"{v['layers'][layer]['average']['margin']:.3f}" for v in results["variants"].values()])
    console.print(table)


def run_probe(settings: ProbeSettings, console: Console) -> dict[str, Any]:
    with output_lock(settings.out):
        if (problem := output_dir_problem(settings.out, settings.overwrite)) is not None:
            raise LoramergeError(problem)
        if settings.max_sentences is not None and settings.max_sentences < 2:
            raise LoramergeError(
                f"--max-sentences {settings.max_sentences}: each sentence is retrieved among the others, so at least 2 "
                "are needed (100+ give a stable number), e.g. --max-sentences 200"
            )
        table = sentence_table(read_pairs_file(settings.pairs), settings.languages, settings.max_sentences)
        check_enough_sentences(table, f"--pairs {settings.pairs}")
        specs = resolve_and_check(parse_adapter_specs(list(settings.adapters)))  # NAME=PATH, PATH or a Hub id
        source = parse_model_spec(settings.model)
        tokenizer, model = load_tokenizer(source), load_causal_lm(source)
        layers = parse_layers(settings.layers, num_decoder_layers(model))
        names: list[str | None] = [None, *specs]
        for path in specs.values():
            check_adapter_fits(path, model, settings.model)
        if specs:
            from peft import PeftModel

            paths = iter(specs.items())
            first, path = next(paths)
            model = PeftModel.from_pretrained(model, str(path), adapter_name=first)
            for name, path in paths:
                model.load_adapter(str(path), adapter_name=name)
        labels = ["base", *specs]
        texts = table.sentences()
        total = sum(len(sentences) for sentences in texts.values()) * len(names)
        results: dict[str, Any] = {
            "model": settings.model,
            "skip_first_token": settings.skip_first_token,
            "languages": sorted(texts),
            "sentences": {k: len(v) for k, v in texts.items()},
            "variants": {},
        }
        columns = (TextColumn("probing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("", total=total)
            for name, label in zip(names, labels):
                with variant(model, name):
                    vectors = {
                        lang: layer_vectors(
                            model,
                            tokenizer,
                            sentences,
                            settings.skip_first_token,
                            settings.batch_size,
                            on_batch=lambda n: progress.advance(task, n),
                        )
                        for lang, sentences in texts.items()
                    }
                results["variants"][label] = score_layers(table, vectors, layers)
        with atomic_directory(settings.out) as staging:
            (staging / "probe.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
            plot_curves(results, staging / "probe.png")
        print_summary(results, console)
        return results


def plot_curves(results: dict[str, Any], path: Path) -> None:
    """Average margin accuracy per layer, one line per model/adapter (the paper's Figure 1a style)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    figure, axis = pyplot.subplots(figsize=(7, 4))
    for label, variant_result in results["variants"].items():
        layers = [int(layer) for layer in variant_result["layers"]]
        accuracy = [variant_result["layers"][str(layer)]["average"]["margin"] for layer in layers]
        axis.plot(layers, accuracy, marker="o", label=label)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("layer (hidden_states index)")
    axis.set_ylabel("top-1 retrieval accuracy (margin)")
    axis.set_ylim(0, 1)
    axis.set_title(f"{results['model']}: {', '.join(results['languages'])}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
