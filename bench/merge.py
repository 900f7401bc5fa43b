"""Merge benchmark: loramerge vs the I/O floor (Llama-3-8B shapes) and vs PEFT's add_weighted_adapter.

Run:  .venv/bin/python bench/merge.py [--quick]
      .venv/bin/python bench/merge.py --methods [--quick]   (every method, 2 and 4 adapters; bench/out/merge-methods.*)
Prints markdown tables and writes bench/out/merge.json and bench/out/merge.md. Every timing is the median
of REPEATS runs interleaved in this one process, so a concurrent load (e.g. the test suite on the same
cores) slows all contenders alike and the ratios stay meaningful even when absolute times drift.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import torch
from safetensors.torch import load_file, save_file

from loramerge import merge_adapters

OUT = Path(__file__).resolve().parent / "out"
RANK = 16
WEIGHTS = (0.7, 0.5)
PREFIX = "base_model.model."
MB = 2**20
# Llama-3-8B: leaf name -> (parent block, in_features, out_features).
LLAMA3_8B = {
    "q_proj": ("self_attn", 4096, 4096),
    "k_proj": ("self_attn", 4096, 1024),
    "v_proj": ("self_attn", 4096, 1024),
    "o_proj": ("self_attn", 4096, 4096),
    "gate_proj": ("mlp", 4096, 14336),
    "up_proj": ("mlp", 4096, 14336),
    "down_proj": ("mlp", 14336, 4096),
}
# TinyLlama-1.1B's widths. PEFT's svd runs a dense full SVD per module (15-30 s per layer at these widths on
# 2 cores), so 4 layers x 3 repeats keep the whole benchmark under 10 minutes.
PEFT_SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_hidden_layers": 4,
    "num_attention_heads": 32,
    "num_key_value_heads": 4,
    "vocab_size": 1000,
}
QUICK_PEFT_SHAPE = {**PEFT_SHAPE, "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 2}
Factors = dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # module -> (B, A, scale)


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = function()
    return time.perf_counter() - start, value


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median over repeats; non-numeric fields (identical across repeats) come from the first run."""
    return {
        key: statistics.median(run[key] for run in runs) if isinstance(value, float) else value for key, value in runs[0].items()
    }


def folder_mb(folder: Path) -> float:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / MB


def synthetic_adapter(folder: Path, layers: int, seed: int) -> None:
    """Random fp32 factors in PEFT's file layout; building a real 8B model would cost 32 GB of RAM."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for layer in range(layers):
        for leaf, (block, fan_in, fan_out) in LLAMA3_8B.items():
            key = f"{PREFIX}model.layers.{layer}.{block}.{leaf}"
            tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, fan_in, generator=generator) / fan_in**0.5
            tensors[f"{key}.lora_B.weight"] = torch.randn(fan_out, RANK, generator=generator) / RANK**0.5
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": RANK,
        "lora_alpha": 32,
        "target_modules": sorted(LLAMA3_8B),
        "base_model_name_or_path": "meta-llama/Meta-Llama-3-8B",
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": False,
        "use_dora": False,
        "lora_bias": False,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "task_type": "CAUSAL_LM",
    }
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))


def io_floor(inputs: list[str], out: Path) -> None:
    """Read every input tensor and write them all into one file: the bytes 'cat' must move, nothing more."""
    tensors = {}
    for index, path in enumerate(inputs):  # the adapters share key names, so keep them apart
        tensors.update({f"{index}.{key}": value for key, value in load_file(path).items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})


def peak_rss_mb() -> float:
    """This process's own peak RSS. Not ru_maxrss: subprocess starts children with vfork + exec, and Linux
    carries the parent's high-water mark into the child's ru_maxrss (a 10 MB child of a 500 MB parent
    reports 519 MB). VmHWM belongs to the address space exec created, so it is the child's alone."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")) / 1024


def child(spec: dict[str, Any]) -> None:
    """Runs in a fresh interpreter so the peak RSS is this one job's, not the parent's."""
    import_rss, report = psutil.Process().memory_info().rss, {}
    if spec["kind"] == "floor":
        seconds, _ = timed(lambda: io_floor(spec["inputs"], Path(spec["out"])))
    else:
        seconds, result = timed(lambda: merge_adapters(spec["recipe"], spec["out"]))
        report = {"rank": result.report["rank_max"], "reported_max_error": result.report["max_relative_error"]}
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_rss_mb": peak_rss_mb(),
                "import_rss_mb": import_rss / MB,
                "load_1min": os.getloadavg()[0],
                **report,
            }
        )
    )


def run_child(spec: dict[str, Any], checkout: Path | None = None) -> dict[str, Any]:
    """One job in a fresh interpreter; with `checkout`, that checkout's loramerge and bench/merge.py run it (a
    before/after comparison in one run)."""
    # Remove the previous output first: with overwrite the merge would also time deleting it.
    shutil.rmtree(spec["out"], ignore_errors=True)
    script = (checkout / "bench" / "merge.py") if checkout else Path(__file__).resolve()
    environment = {**os.environ, "PYTHONPATH": str(checkout)} if checkout else None
    command = [sys.executable, str(script), "--child", json.dumps(spec)]
    seconds, done = timed(lambda: subprocess.run(command, capture_output=True, text=True, check=True, env=environment))
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {**result, "process_seconds": seconds, "output_mb": folder_mb(Path(spec["out"]))}


def recipe(adapters: list[Path], method: str) -> dict[str, Any]:
    return {
        "sources": [{"path": str(path), "weight": weight} for path, weight in zip(adapters, WEIGHTS)],
        "method": method,
        "rank": RANK if method == "svd" else None,
    }


CORE_METHODS = ("tsv", "iso_c", "iso_cts", "knots_ties", "core_ties", "core_dare")
METHOD_WEIGHTS = (0.7, 0.5, 0.6, 0.4)


def method_spec(adapters: list[Path], root: Path, method: str) -> dict[str, Any]:
    sources = [{"path": str(path), "weight": weight} for path, weight in zip(adapters, METHOD_WEIGHTS)]
    return {"kind": "merge", "recipe": {"sources": sources, "method": method}, "out": str(root / f"{method}-{len(adapters)}")}


def method_runs(adapters: list[Path], methods: tuple[str, ...], repeats: int) -> dict[str, dict[str, Any]]:
    """Median of `repeats` fresh-process runs per method, interleaved so a background load hits all alike."""
    root = adapters[0].parent
    runs: dict[str, list[dict[str, Any]]] = {method: [] for method in methods}
    for _ in range(repeats):
        for method in methods:
            runs[method].append(run_child(method_spec(adapters, root, method)))
            shutil.rmtree(root / f"{method}-{len(adapters)}", ignore_errors=True)  # 0.7 GB each at 4 full adapters
    return {method: medians(measured) for method, measured in runs.items()}


def bench_methods(layers: int, slice_layers: int, repeats: int, counts: tuple[int, ...] = (2, 4)) -> dict[str, Any]:
    """Every core-space method and svd on all `layers` (the targets), and against today's dense ties on the
    first `slice_layers` of the same adapters: dense ties costs ~10-20 s per module on 2 cores (224 modules: over
    an hour a merge), so it runs once, on the slice, and the ratio compares both on exactly those inputs."""
    results: dict[str, Any] = {"layers": layers, "slice_layers": slice_layers, "modules": layers * len(LLAMA3_8B)}
    full = [OUT / "llama3-8b-methods" / f"a{index}" for index in range(max(counts))]
    part = [OUT / "llama3-8b-methods-slice" / f"a{index}" for index in range(max(counts))]
    for seed, (whole, piece) in enumerate(zip(full, part)):
        synthetic_adapter(whole, layers, seed)
        synthetic_adapter(piece, slice_layers, seed)  # the same seed: the first layers' factors are the same
    for count in counts:
        found = method_runs(full[:count], (*CORE_METHODS, "svd"), repeats)
        sliced = method_runs(part[:count], (*CORE_METHODS, "svd"), repeats) | method_runs(part[:count], ("ties",), 1)
        for method in (*CORE_METHODS, "svd"):
            found[method]["slice_seconds"] = sliced[method]["seconds"]
            found[method]["speedup_over_ties"] = sliced["ties"]["seconds"] / sliced[method]["seconds"]
        found["ties"] = {**sliced["ties"], "slice_seconds": sliced["ties"]["seconds"]}
        found["ties"]["seconds"] = sliced["ties"]["seconds"] * layers / slice_layers  # extrapolated, labelled so
        floor = {"kind": "floor", "inputs": [str(a / "adapter_model.safetensors") for a in full[:count]]}
        found["io_floor"] = medians([run_child({**floor, "out": str(full[0].parent / "floor")}) for _ in range(repeats)])
        shutil.rmtree(full[0].parent / "floor", ignore_errors=True)
        results[str(count)] = found
    results["input_mb_each"] = folder_mb(full[0])
    return results


def bench_svd(repeats: int, baseline: Path | None, counts: tuple[int, ...] = (2, 4)) -> dict[str, Any]:
    """svd at full rank on the --methods adapters (32 layers, r=16, weights METHOD_WEIGHTS) beside iso_c (a core
    method) and the I/O floor, fresh processes interleaved; with a baseline checkout, its svd and iso_c in the same
    rounds."""
    full = [OUT / "llama3-8b-methods" / f"a{index}" for index in range(max(counts))]
    for seed, folder in enumerate(full):
        synthetic_adapter(folder, 32, seed)
    results: dict[str, Any] = {}
    for count in counts:
        root, runs = full[0].parent, {}
        jobs = {"svd": (method_spec(full[:count], root, "svd"), None), "iso_c": (method_spec(full[:count], root, "iso_c"), None)}
        if baseline is not None:
            for method in ("svd", "iso_c"):
                spec = {**method_spec(full[:count], root, method), "out": str(root / f"{method}-baseline")}
                jobs[f"{method} (baseline)"] = (spec, baseline)
        floor = {
            "kind": "floor",
            "inputs": [str(a / "adapter_model.safetensors") for a in full[:count]],
            "out": str(root / "floor"),
        }
        jobs["io_floor"] = (floor, None)
        for _ in range(repeats):
            for name, (spec, checkout) in jobs.items():
                runs.setdefault(name, []).append(run_child(spec, checkout))
                shutil.rmtree(spec["out"], ignore_errors=True)
        results[str(count)] = {name: medians(measured) for name, measured in runs.items()}
    return results


def svd_markdown(results: dict[str, Any], meta_: dict[str, Any]) -> str:
    names = list(results["2"])
    lines = [f"{meta_['command']} at {meta_['git_head']}; median of {meta_['repeats']} fresh processes, interleaved", ""]
    lines += table(
        ["adapters", *(f"{name}: call s / peak RSS MB" for name in names)],
        [
            [count, *(f"{found[name]['seconds']:.2f} / {found[name]['peak_rss_mb']:.0f}" for name in names)]
            for count, found in results.items()
        ],
    )
    return "\n".join(lines)


def method_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    four = results["4"]
    checks = []
    for method in CORE_METHODS:
        checks += [
            (f"{method}, 4 adapters: <= 5 s (call)", four[method]["seconds"], 5.0, 1),
            (f"{method}, 4 adapters: peak RSS <= 1 GiB (MB)", four[method]["peak_rss_mb"], 1024.0, 1),
            (f"{method}, 4 adapters: >= 20x faster than dense ties", four[method]["speedup_over_ties"], 20.0, -1),
        ]
    return [{"target": name, "value": value, "reached": sign * value <= sign * bound} for name, value, bound, sign in checks]


def methods_markdown(results: dict[str, Any], meta_: dict[str, Any]) -> str:
    slice_ = results["slice_layers"]
    lines = [
        f"Llama-3-8B shapes: {results['layers']} layers, {results['modules']} modules, r={RANK} fp32 adapters of "
        f"{results['input_mb_each']:.0f} MB each; median of {meta_['repeats']} fresh-process runs (dense ties: one run, "
        f"on the first {slice_} layers only; its full-depth time is that x {results['layers'] // slice_}, marked ~). "
        "io_floor: read every input tensor and write them all into one file, the bytes any merge must move.",
        "",
    ]
    if "--quick" in meta_["command"]:
        lines[:0] = ["**--quick smoke test: shapes too small for the targets below to mean anything.**", ""]
    rows = []
    for count in (key for key in results if key.isdigit()):
        for method, run in results[count].items():
            estimated = "~" if method == "ties" else ""
            speedup = f"{run['speedup_over_ties']:.0f}x" if "speedup_over_ties" in run else "1x" if method == "ties" else "-"
            slice_seconds = f"{run['slice_seconds']:.2f}" if "slice_seconds" in run else "-"
            error = f"{run['reported_max_error']:.2e}" if "reported_max_error" in run else "-"
            seconds, rank = f"{estimated}{run['seconds']:.2f}", str(run.get("rank", "-"))
            rows.append(
                [
                    count,
                    method,
                    seconds,
                    slice_seconds,
                    f"{run['peak_rss_mb']:.0f}",
                    rank,
                    error,
                    speedup,
                    f"{run['load_1min']:.1f}",
                ]
            )
    header = ["adapters", "method", "call s, all layers", f"call s, {slice_} layers", "peak RSS MB", "rank"]
    lines += table([*header, "max reported error", f"speed vs dense ties ({slice_} layers)", "load"], rows)
    lines += table(
        ["target", "value", "reached"],
        [[t["target"], f"{t['value']:.2f}", "reached" if t["reached"] else "NOT reached"] for t in results["targets"]],
    )
    return "\n".join(lines)


def bench_llama8b(layers: int, repeats: int) -> dict[str, Any]:
    root = OUT / "llama3-8b"
    adapters = [root / "a1", root / "a2"]
    for seed, folder in enumerate(adapters):
        synthetic_adapter(folder, layers, seed)
    specs: dict[str, dict[str, Any]] = {
        m: {"kind": "merge", "recipe": recipe(adapters, m), "out": str(root / m)} for m in ("svd", "cat")
    }
    specs["io_floor"] = {
        "kind": "floor",
        "inputs": [str(a / "adapter_model.safetensors") for a in adapters],
        "out": str(root / "floor"),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in specs}
    for _ in range(repeats):
        for name, spec in specs.items():  # interleaved, so a background load hits all three alike
            runs[name].append(run_child(spec))
    result: dict[str, Any] = {name: medians(found) for name, found in runs.items()}
    result.update(layers=layers, modules=layers * len(LLAMA3_8B), input_mb=sum(folder_mb(a) for a in adapters))
    result["cat_over_floor"] = result["cat"]["seconds"] / result["io_floor"]["seconds"]
    return result


def peft_inputs(shape: dict[str, int], root: Path) -> tuple[Path, list[Path]]:
    """A random base model on disk and two r=16 adapters made and saved by PEFT itself."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**shape)).save_pretrained(root / "base")
    for seed, alpha in enumerate((32, 16)):  # different alphas, so each input's own scale must be applied
        config = LoraConfig(r=RANK, lora_alpha=alpha, target_modules=sorted(LLAMA3_8B), task_type="CAUSAL_LM")
        model = get_peft_model(LlamaForCausalLM.from_pretrained(root / "base"), config)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # PEFT starts B at zero; a trained adapter has both factors non-zero
            for parameter in (p for name, p in model.named_parameters() if "lora_" in name):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) / parameter.shape[1] ** 0.5)
        model.save_pretrained(root / f"a{seed + 1}")
    return root / "base", [root / "a1", root / "a2"]


def peft_factors(model: Any, adapter: str) -> Factors:
    """A merged adapter's factors as PEFT holds them, keyed like loramerge's module names."""
    return {
        name.removeprefix(PREFIX): (
            module.lora_B[adapter].weight.detach().clone(),
            module.lora_A[adapter].weight.detach().clone(),
            float(module.scaling[adapter]),
        )
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and adapter in module.lora_A
    }


def peft_merge(model: Any, combination: str, save_dir: Path) -> tuple[dict[str, float], Factors]:
    name, extra = f"m_{combination}", {"svd_rank": RANK} if combination == "svd" else {}
    merge, _ = timed(lambda: model.add_weighted_adapter(["a1", "a2"], list(WEIGHTS), name, combination_type=combination, **extra))
    save, _ = timed(lambda: model.save_pretrained(str(save_dir), selected_adapters=[name]))  # loramerge's time includes its write
    return {f"awa_{combination}": merge, f"save_{combination}": save}, peft_factors(model, name)


def peft_session(base_dir: Path, adapters: list[Path], save_dir: Path) -> tuple[dict[str, float], dict[str, Factors]]:
    """One PEFT merge session as a user runs it: load the base and both adapters, then merge and save."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    times: dict[str, float] = {}
    times["load_base"], base = timed(lambda: LlamaForCausalLM.from_pretrained(base_dir))
    times["load_adapters"], model = timed(lambda: PeftModel.from_pretrained(base, str(adapters[0]), adapter_name="a1"))
    times["load_adapters"] += timed(lambda: model.load_adapter(str(adapters[1]), adapter_name="a2"))[0]
    factors = {}
    for combination in ("cat", "svd", "linear"):
        step, factors[combination] = peft_merge(model, combination, save_dir)
        times.update(step)
        times[f"end_to_end_{combination}"] = times["load_base"] + times["load_adapters"] + sum(step.values())
    return times, factors


def file_factors(folder: Path) -> Factors:
    config = json.loads((folder / "adapter_config.json").read_text())
    if config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_rslora"):
        raise ValueError(f"{folder}: per-module scales are not expected in this benchmark")
    scale = config["lora_alpha"] / config["r"]
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    names = [key[len(PREFIX) : -len(".lora_A.weight")] for key in tensors if key.endswith(".lora_A.weight")]
    return {n: (tensors[f"{PREFIX}{n}.lora_B.weight"], tensors[f"{PREFIX}{n}.lora_A.weight"], scale) for n in names}


def exact_updates(inputs: list[Factors]) -> dict[str, torch.Tensor]:
    """sum_i w_i s_i B_i A_i per module, dense float64: the reference every output is measured against."""
    return {
        name: sum(w * s * (b.double() @ a.double()) for w, (b, a, s) in zip(WEIGHTS, (f[name] for f in inputs)))
        for name in inputs[0]
    }


def relative_errors(factors: Factors, exact: dict[str, torch.Tensor]) -> dict[str, float]:
    if set(factors) != set(exact):
        raise ValueError(f"output covers {len(factors)} modules, the inputs {len(exact)}")
    return {
        name: float(torch.linalg.norm(s * (b.double() @ a.double()) - exact[name]) / torch.linalg.norm(exact[name]))
        for name, (b, a, s) in factors.items()
    }


def eckart_young(exact: torch.Tensor) -> float:
    """The least relative error of any rank-16 matrix (dense SVD of the exact sum, Eckart-Young)."""
    energy = torch.linalg.svdvals(exact) ** 2
    return float((energy[RANK:].sum() / energy.sum()).sqrt())


def accuracy(adapters: list[Path], outputs: dict[str, Factors], modules: list[str]) -> dict[str, Any]:
    exact = exact_updates([file_factors(folder) for folder in adapters])
    errors = {label: relative_errors(factors, exact) for label, factors in outputs.items()}
    result: dict[str, Any] = {"max_relative_error": {label: max(e.values()) for label, e in errors.items()}}
    result["rank"] = {label: max(b.shape[1] for b, _, _ in factors.values()) for label, factors in outputs.items()}
    result["eckart_young"] = {
        name: {
            "optimum": eckart_young(exact[name]),
            "loramerge_svd": errors["loramerge_svd"][name],
            "peft_svd": errors["peft_svd"][name],
        }
        for name in modules
    }
    return result


def bench_peft(shape: dict[str, int], repeats: int) -> dict[str, Any]:
    root = OUT / "peft"
    shutil.rmtree(root, ignore_errors=True)
    base_dir, adapters = peft_inputs(shape, root)
    specs = {m: {"kind": "merge", "recipe": recipe(adapters, m), "out": str(root / f"loramerge_{m}")} for m in ("cat", "svd")}
    peft_runs, loramerge_runs = [], {method: [] for method in specs}
    for _ in range(repeats):
        times, factors = peft_session(base_dir, adapters, root / "peft_out")
        peft_runs.append(times)
        for method, spec in specs.items():
            loramerge_runs[method].append(run_child(spec))
    result: dict[str, Any] = {"shape": shape, "peft": medians(peft_runs)}
    result["loramerge"] = {method: medians(runs) for method, runs in loramerge_runs.items()}
    for method in ("cat", "svd"):
        seconds = result["loramerge"][method]["seconds"]
        result[f"speedup_{method}_awa"] = result["peft"][f"awa_{method}"] / seconds
        result[f"speedup_{method}_end_to_end"] = result["peft"][f"end_to_end_{method}"] / seconds
    outputs = {f"peft_{c}": f for c, f in factors.items()}
    outputs.update({f"loramerge_{m}": file_factors(Path(spec["out"])) for m, spec in specs.items()})
    modules = [f"model.layers.0.self_attn.{leaf}" for leaf in ("q_proj", "k_proj")] + ["model.layers.0.mlp.down_proj"]
    result["accuracy"] = accuracy(adapters, outputs, modules)
    return result


def meta(quick: bool, repeats: int) -> dict[str, Any]:
    import peft
    import transformers

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    git = ["git", "-C", str(OUT.parent.parent)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run([*git, "status", "--porcelain", "loramerge"], capture_output=True, text=True).stdout.split()[1::2]
    cpu = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    return {
        "command": ".venv/bin/python bench/merge.py" + (" --quick" if quick else ""),
        "repeats": repeats,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": psutil.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "peft": peft.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "git_head": head,
        "loramerge_uncommitted": dirty,
        "load_1min_at_start": os.getloadavg()[0],
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    llama, compare = results["llama3_8b"], results["peft"]
    checks = [
        ("loramerge svd, Llama-3-8B shapes, <= 5 s (call)", llama["svd"]["seconds"], 5.0, 1),
        ("loramerge svd peak RSS <= 1 GB (MB)", llama["svd"]["peak_rss_mb"], 1024.0, 1),
        ("loramerge cat <= 2x I/O floor (call-time ratio)", llama["cat_over_floor"], 2.0, 1),
        ("loramerge svd >= 100x faster than PEFT svd, add_weighted_adapter alone", compare["speedup_svd_awa"], 100.0, -1),
        ("loramerge svd >= 100x faster than PEFT svd, end to end", compare["speedup_svd_end_to_end"], 100.0, -1),
    ]
    # sign 1: value must stay at or below the bound; -1: at or above it
    return [{"target": name, "value": value, "reached": sign * value <= sign * bound} for name, value, bound, sign in checks]


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows), ""]


def markdown(results: dict[str, Any]) -> str:
    llama, compare, acc = results["llama3_8b"], results["peft"], results["peft"]["accuracy"]
    peft_times, ours = compare["peft"], compare["loramerge"]
    lines = [
        f"Llama-3-8B shapes: {llama['layers']} layers, {llama['modules']} modules, 2 adapters r={RANK} fp32, "
        f"{llama['input_mb']:.0f} MB of input; median of {results['meta']['repeats']}, each in a fresh process.",
        "",
    ]
    if "--quick" in results["meta"]["command"]:
        lines[:0] = ["**--quick smoke test: shapes too small for the targets below to mean anything.**", ""]
    lines += table(
        ["job", "call s", "process s", "peak RSS MB", "RSS after imports MB", "output MB", "load avg"],
        [
            [
                name,
                f"{run['seconds']:.2f}",
                f"{run['process_seconds']:.2f}",
                f"{run['peak_rss_mb']:.0f}",
                f"{run['import_rss_mb']:.0f}",
                f"{run['output_mb']:.0f}",
                f"{run['load_1min']:.1f}",
            ]
            for name, run in ((name, llama[name]) for name in ("svd", "cat", "io_floor"))
        ],
    )
    lines += [
        f"cat / I/O floor: {llama['cat_over_floor']:.2f} (call), "
        f"{llama['cat']['process_seconds'] / llama['io_floor']['process_seconds']:.2f} (process)",
        "",
        f"PEFT comparison, random LlamaForCausalLM {compare['shape']}; PEFT load base "
        f"{peft_times['load_base']:.2f} s, load 2 adapters {peft_times['load_adapters']:.2f} s.",
        "",
    ]
    lines += table(
        [
            "method",
            "PEFT add_weighted_adapter s",
            "PEFT end to end s",
            "loramerge call s",
            "speedup (awa)",
            "speedup (end to end)",
        ],
        [
            [
                m,
                f"{peft_times[f'awa_{m}']:.3f}",
                f"{peft_times[f'end_to_end_{m}']:.3f}",
                f"{ours[m]['seconds']:.3f}",
                f"{compare[f'speedup_{m}_awa']:.1f}x",
                f"{compare[f'speedup_{m}_end_to_end']:.1f}x",
            ]
            for m in ("cat", "svd")
        ],
    )
    lines += table(
        ["output", "rank", "max relative error vs exact weighted sum"],
        [[label, str(acc["rank"][label]), f"{error:.2e}"] for label, error in acc["max_relative_error"].items()],
    )
    lines += table(
        ["module (rank 16)", "Eckart-Young optimum", "loramerge svd", "PEFT svd"],
        [
            [name, *(f"{row[k]:.6f}" for k in ("optimum", "loramerge_svd", "peft_svd"))]
            for name, row in acc["eckart_young"].items()
        ],
    )
    lines += table(
        ["target", "value", "reached"],
        [[t["target"], f"{t['value']:.2f}", "reached" if t["reached"] else "NOT reached"] for t in results["targets"]],
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description="Benchmark loramerge merges against the I/O floor and PEFT.")
    parser.add_argument("--quick", action="store_true", help="small shapes, one repeat: a smoke test under 60 s")
    parser.add_argument("--methods", action="store_true", help="only: every method on 2 and 4 adapters vs dense ties")
    parser.add_argument("--svd", action="store_true", help="only: svd beside iso_c and the I/O floor, 2 and 4 adapters")
    parser.add_argument("--baseline", type=Path, help="--svd: also run svd from this checkout (before/after in one run)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: one measured job in a fresh process
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    repeats = 1 if args.quick else args.repeats
    if args.svd:
        meta_ = meta(args.quick, repeats)
        meta_["command"] += " --svd" + (f" --baseline {args.baseline}" if args.baseline else "")
        results = bench_svd(repeats, args.baseline)
        print(svd_markdown(results, meta_))
        (OUT / "merge-svd.json").write_text(json.dumps({"meta": meta_, **results}, indent=2) + "\n")
        return
    if args.methods:
        meta_ = meta(args.quick, repeats)
        meta_["command"] += " --methods"
        results = bench_methods(2 if args.quick else 32, 1 if args.quick else 2, repeats)
        results["targets"] = method_targets(results)
        print(methods_markdown(results, meta_))
        (OUT / "merge-methods.json").write_text(json.dumps({"meta": meta_, **results}, indent=2) + "\n")
        (OUT / "merge-methods.md").write_text(methods_markdown(results, meta_))
        return
    results: dict[str, Any] = {"meta": meta(args.quick, repeats)}
    results["llama3_8b"] = bench_llama8b(4 if args.quick else 32, repeats)
    results["peft"] = bench_peft(QUICK_PEFT_SHAPE if args.quick else PEFT_SHAPE, repeats)
    results["targets"] = targets(results)
    print(markdown(results))
    (OUT / "merge.json").write_text(json.dumps(results, indent=2) + "\n")
    (OUT / "merge.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
