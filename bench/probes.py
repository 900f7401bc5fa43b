"""Small one-process probes behind figures BENCHMARKS.md quotes beside its side-by-side benchmarks: where time and
memory go, not before/after comparisons (bench/merge.py and bench/train.py make those).

    .venv/bin/python bench/probes.py svd-module          # ms per module of svd and iso_c, one thread
    .venv/bin/python bench/probes.py merge-profile svd 4 # cProfile of one merge of the bench/merge.py --methods adapters
    .venv/bin/python bench/probes.py tokenizer-memory    # RssAnon around loading and freeing Gemma-3's tokenizer
    .venv/bin/python bench/probes.py step-memory         # VmHWM / RssAnon / RssFile around loading and training steps
    .venv/bin/python bench/probes.py pass-cost           # fixed cost of one more forward pass, in token positions

`svd-module` runs whatever loramerge is importable: `PYTHONPATH=<checkout>` times another commit's code (the
training probes import their modules inside, so the merge probes also run against commits that predate them).
`step-memory` under `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=N` shows the allocator's effect on the peak.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch

from loramerge.cli.support import quiet_libraries
from loramerge.merge.engine import merge_adapters
from loramerge.merge.methods import METHODS, Contribution, MethodSettings

OUT = Path(__file__).resolve().parent / "out"
GEMMA = "bundled:gemma-3-270m"
TOPICS = OUT / "transfer" / "data" / "topics"  # bench/transfer_study.py builds it
METHOD_WEIGHTS = (0.7, 0.5, 0.6, 0.4)  # bench/merge.py --methods


def memory(tag: str) -> None:
    fields = ("VmHWM", "RssAnon", "RssFile")
    lines = Path("/proc/self/status").read_text().splitlines()
    status = {line.split(":")[0]: int(line.split()[1]) // 1024 for line in lines if line.startswith(fields)}
    print(f"{tag}: " + ", ".join(f"{field} {status[field]} MB" for field in fields), flush=True)


def median_ms(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def svd_module(repeats: int) -> None:
    torch.set_num_threads(1)  # as the engine runs factor methods
    generator = torch.Generator().manual_seed(0)
    for count in (2, 4):
        for out, fan_in in ((14336, 4096), (4096, 4096), (1024, 4096)):
            contributions = [
                Contribution(
                    a=torch.randn(16, fan_in, generator=generator) * 0.01,
                    b=torch.randn(out, 16, generator=generator) * 0.01,
                    scale=2.0,
                    weight=1.0,
                )
                for _ in range(count)
            ]
            settings = MethodSettings(rank=16)
            cells = [
                f"{name} {median_ms(partial(METHODS[name].function, contributions, settings, generator), repeats):.1f} ms"
                for name in ("svd", "iso_c")
            ]
            print(f"{count} adapters, {out} x {fan_in}: " + ", ".join(cells))


def merge_profile(method: str, count: int) -> None:
    sources = [{"path": str(OUT / "llama3-8b-methods" / f"a{index}"), "weight": METHOD_WEIGHTS[index]} for index in range(count)]
    with tempfile.TemporaryDirectory() as work:
        profile = cProfile.Profile()
        start = time.perf_counter()
        profile.runcall(merge_adapters, {"sources": sources, "method": method}, Path(work) / "out")
        print(f"{method}, {count} adapters: {time.perf_counter() - start:.2f} s")
    pstats.Stats(profile).sort_stats("tottime").print_stats(15)


def tokenizer_memory() -> None:
    from loramerge.models.loading import load_tokenizer, parse_model_spec
    from loramerge.train.memory import release_to_os

    memory("imports")
    tokenizer = load_tokenizer(parse_model_spec(GEMMA))
    memory("tokenizer loaded")
    del tokenizer
    gc.collect()
    memory("tokenizer deleted")
    release_to_os()
    memory("after malloc_trim")


def step_memory(steps: int) -> None:
    from peft import get_peft_model

    from loramerge.models.loading import load_causal_lm, load_tokenizer, parse_model_spec
    from loramerge.train.memory import release_to_os
    from loramerge.train.recipe import TrainRecipe
    from loramerge.train.run import lora_config, objective_module
    from loramerge.train.streams import build_streams

    memory("imports")
    recipe = TrainRecipe.model_validate(
        {
            "model": GEMMA,
            "data": str(TOPICS / "train.jsonl"),
            "pairs": str(TOPICS / "align-train.jsonl"),
            "align": {"layer": 9},
            "batch_size": 16,  # the topic study's micro-batch, as bench/roofline.py runs it
            "max_length": 96,
        }
    )
    source = parse_model_spec(GEMMA)
    tokenizer = load_tokenizer(source)
    streams, _, _ = build_streams(recipe, "task", tokenizer)
    model = load_causal_lm(source)
    memory("model loaded")
    del tokenizer  # as train_adapter does
    release_to_os()
    peft_model = get_peft_model(model, lora_config(recipe, None))
    objective = objective_module(peft_model, 9, recipe)
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-4)
    memory("LoRA ready")
    start = time.perf_counter()
    for step in range(steps):
        objective("task", **streams["task"].next_batch()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        memory(f"task step {step}")
    print(f"{steps} task steps: {time.perf_counter() - start:.1f} s")


def forward_backward(decoder: torch.nn.Module, ids: torch.Tensor) -> None:
    decoder(input_ids=ids).last_hidden_state.pow(2).mean().backward()


def pass_cost(repeats: int) -> None:
    """Forward + backward of the decoder with LoRA at 8-256 positions; a line through the medians: its intercept
    over its slope is the cost of one more pass in positions (the length split's PASS_COST_POSITIONS)."""
    from peft import get_peft_model

    from loramerge.models.loading import load_causal_lm, parse_model_spec
    from loramerge.train.recipe import TrainRecipe
    from loramerge.train.run import lora_config

    for spec in (GEMMA, "bundled:smollm2-135m"):
        peft_model = get_peft_model(load_causal_lm(parse_model_spec(spec)), lora_config(TrainRecipe(model=spec), None))
        decoder = peft_model.get_base_model().model
        points = []
        for positions in (8, 64, 128, 256):
            ids = torch.randint(100, 1000, (1, positions))
            points.append((positions, median_ms(partial(forward_backward, decoder, ids), repeats)))
        mean_x, mean_y = statistics.fmean(p for p, _ in points), statistics.fmean(t for _, t in points)
        slope = sum((p - mean_x) * (t - mean_y) for p, t in points) / sum((p - mean_x) ** 2 for p, _ in points)
        fixed = mean_y - slope * mean_x
        print(f"{spec}: " + ", ".join(f"{p} positions {t:.0f} ms" for p, t in points))
        print(f"  fixed {fixed:.0f} ms + {slope:.2f} ms a position: one more pass costs {fixed / slope:.0f} positions")


def main() -> None:
    quiet_libraries()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("probe", choices=("svd-module", "merge-profile", "tokenizer-memory", "step-memory", "pass-cost"))
    parser.add_argument("arguments", nargs="*", help="merge-profile: METHOD COUNT")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=6)
    options = parser.parse_args()
    if options.probe == "svd-module":
        svd_module(options.repeats)
    elif options.probe == "merge-profile":
        method, count = [*options.arguments, "4"][:2] if options.arguments else ["svd", "4"]
        merge_profile(method, int(count))
    elif options.probe == "tokenizer-memory":
        tokenizer_memory()
    elif options.probe == "step-memory":
        step_memory(options.steps)
    else:
        torch.set_num_threads(2)
        pass_cost(options.repeats)


if __name__ == "__main__":
    main()
