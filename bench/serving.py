"""Does llama.cpp apply what PEFT applies? loramerge's outputs served by llama.cpp itself, logits against PEFT's.

    .venv/bin/pip install sentencepiece   # llama.cpp's converters need it to read the tokenizer
    .venv/bin/python bench/serving.py [--llama-python PATH]

1. llama.cpp: llama-cpp-python 0.3.36 built from its PyPI source once, into bench/out/serving/llamacpp-venv
   (about 10-20 minutes on 2 cores; or pass --llama-python, a Python that can import llama_cpp); the same
   sdist's vendored llama.cpp gives the converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py).
2. base: bundled SmolLM2-135M (30 layers), converted to GGUF f32 by llama.cpp's own converter.
3. adapters made by PEFT on it with random non-zero factors: task (r 8, all layers, all 7 projections), align
   (r 8, layers 0-14), an rsLoRA adapter and one with rank/alpha patterns.
4. each case twice, before and after: compact (the old default) vs portable (the new default) for the exact
   task + align merge and for svd --energy 0.9; the raw adapter vs `loramerge export` for rsLoRA and patterns.
5. every adapter converted by convert_lora_to_gguf.py, loaded with llama.cpp's lora_path; float32 logits over
   the same token ids compared with PEFT's (float32): max |llama.cpp - PEFT| / max |PEFT - base| ("error /
   effect") and top-1 agreement; the base model alone gives the noise floor.
Writes bench/out/serving/summary.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import torch

OUT = Path("bench/out/serving")
LLAMA_CPP = "llama-cpp-python==0.3.36"
SENTENCES = "The file could not be opened. Le fichier n'a pas pu être ouvert. Save the document before closing it."
# Runs in the llama.cpp environment: float32 logits of every position, with and without a LoRA adapter.
LLAMA_LOGITS = """
import json, sys
import numpy as np
from llama_cpp import Llama
job = json.loads(sys.argv[1])
for lora, out in job["runs"]:
    # type_k/type_v 0 = GGML_TYPE_F32: the default f16 KV cache alone moves logits by ~4e-2 on this model
    llm = Llama(model_path=job["base"], lora_path=lora, n_ctx=256, logits_all=True, verbose=False, n_threads=2, seed=0, type_k=0, type_v=0)
    llm.eval(job["tokens"])
    np.save(out, np.array(llm.scores[: len(job["tokens"])], dtype=np.float32))
    del llm
"""


def run(command: list[str], **kwargs: object) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run(command, check=True, **kwargs)  # type: ignore[call-overload]


def llama_environment(python: str | None) -> tuple[str, Path]:
    """(a Python that imports llama_cpp, the vendored llama.cpp source with its converters)."""
    sdist_dir = OUT / "sdist"
    if not list(sdist_dir.glob("llama_cpp_python-*.tar.gz")):
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", LLAMA_CPP, "-d", str(sdist_dir)])
    sdist = next(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    source = OUT / sdist.name.removesuffix(".tar.gz")
    if not source.exists():
        with tarfile.open(sdist) as archive:
            archive.extractall(OUT, filter="data")
    if python is None:
        venv = OUT / "llamacpp-venv"
        python = str(venv / "bin" / "python")
        if not Path(python).exists():
            run([sys.executable, "-m", "venv", str(venv)])
            run([python, "-m", "pip", "install", str(sdist), "numpy"])  # compiles llama.cpp from the sdist
    return python, source / "vendor" / "llama.cpp"


def make_adapters(base: Path, root: Path) -> dict[str, Path]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from loramerge.testing.tiny import ALL_LINEAR

    specs = {
        "task": dict(r=8, lora_alpha=16, target_modules=ALL_LINEAR),
        "align": dict(r=8, lora_alpha=16, target_modules=ALL_LINEAR, layers_to_transform=list(range(15))),
        "rslora": dict(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"], use_rslora=True),
        "patterns": dict(
            r=8, lora_alpha=16, target_modules=ALL_LINEAR, rank_pattern={"down_proj": 4}, alpha_pattern={"q_proj": 32}
        ),
    }
    folders = {}
    for seed, (name, options) in enumerate(specs.items()):
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), LoraConfig(**options))
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # B starts at zero: give every factor values of a trained adapter's size
            for parameter in model.parameters():
                if parameter.requires_grad:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.02)
        model.save_pretrained(root / name)
        folders[name] = root / name
    return folders


def cases(adapters: dict[str, Path], root: Path) -> dict[str, dict[str, Path]]:
    """{case: {"before": adapter, "after": adapter}}."""
    from loramerge import merge_adapters

    both = {"sources": [{"path": str(adapters["task"])}, {"path": str(adapters["align"])}]}
    merges = {
        "task + align (cat)": ("cat", both),
        "task + align (svd --energy 0.9)": ("svd-energy", {**both, "method": "svd", "energy": 0.9}),
    }
    built: dict[str, dict[str, Path]] = {}
    for case, (slug, recipe) in merges.items():
        built[case] = {}
        for moment, layout in (("before", "compact"), ("after", "portable")):
            out = root / f"{slug}-{layout}"
            merge_adapters({**recipe, "layout": layout}, out, overwrite=True)
            built[case][moment] = out
    for name in ("rslora", "patterns"):
        out = root / f"{name}-exported"
        merge_adapters({"sources": [{"path": str(adapters[name])}]}, out, overwrite=True)  # = loramerge export
        built[f"{name} input"] = {"before": adapters[name], "after": out}
    return built


def peft_logits(base: Path, adapter: Path | None, tokens: list[int]) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()


def compare(llama: torch.Tensor, peft: torch.Tensor, base: torch.Tensor, llama_base: torch.Tensor) -> dict[str, float]:
    """error: max |llama.cpp - PEFT| over all logits; effect: max |PEFT - base|; shift error: the same comparison
    of what the adapter changes, (llama.cpp with - without) against (PEFT with - without), which cancels the two
    runtimes' own difference on the base model (the noise floor row)."""
    effect = (peft - base).abs().max().item()
    error = (llama - peft).abs().max().item()
    shift_error = ((llama - llama_base) - (peft - base)).abs().max().item()
    agree = (llama.argmax(-1) == peft.argmax(-1)).float().mean().item()
    return {
        "error": error,
        "effect": effect,
        "error_over_effect": error / effect if effect else float("nan"),
        "shift_error_over_effect": shift_error / effect if effect else float("nan"),
        "top1_agreement": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llama-python", help="a Python that can import llama_cpp (default: build one)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        sys.exit("llama.cpp's converter needs sentencepiece: .venv/bin/pip install sentencepiece")
    python, llama_cpp_source = llama_environment(args.llama_python)

    from transformers import AutoTokenizer

    from loramerge.models.bundled import load_model_dir

    base = load_model_dir("bundled:smollm2-135m")
    base_gguf = OUT / "smollm2-f32.gguf"
    if not base_gguf.exists():
        run(
            [
                sys.executable,
                str(llama_cpp_source / "convert_hf_to_gguf.py"),
                str(base),
                "--outtype",
                "f32",
                "--outfile",
                str(base_gguf),
            ]
        )
    adapters = make_adapters(base, OUT / "adapters")
    built = cases(adapters, OUT / "outputs")
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokens = [tokenizer.bos_token_id or 1, *tokenizer(SENTENCES, add_special_tokens=False)["input_ids"]]

    runs, converted = [[None, str(OUT / "llama-base.npy")]], {}
    for case, moments in built.items():
        for moment, adapter in moments.items():
            gguf = OUT / f"{adapter.name}.gguf"
            run(
                [
                    sys.executable,
                    str(llama_cpp_source / "convert_lora_to_gguf.py"),
                    "--base",
                    str(base),
                    "--outtype",
                    "f32",
                    "--outfile",
                    str(gguf),
                    str(adapter),
                ]
            )
            converted[(case, moment)] = OUT / f"llama-{adapter.name}.npy"
            runs.append([str(gguf), str(converted[(case, moment)])])
    run([python, "-c", LLAMA_LOGITS, json.dumps({"base": str(base_gguf), "tokens": tokens, "runs": runs})])

    import numpy

    peft_base = peft_logits(base, None, tokens)
    llama_base = torch.from_numpy(numpy.load(OUT / "llama-base.npy"))
    rows = {"noise floor (base, no adapter)": {"-": compare(llama_base, peft_base, peft_base * 0, llama_base * 0)}}
    for case, moments in built.items():
        rows[case] = {
            moment: compare(
                torch.from_numpy(numpy.load(converted[(case, moment)])), peft_logits(base, adapter, tokens), peft_base, llama_base
            )
            for moment, adapter in moments.items()
        }
    (OUT / "summary.json").write_text(json.dumps({"tokens": len(tokens), "rows": rows}, indent=2) + "\n")
    print("\n| case | layout | max abs error | adapter effect | error / effect | shift error / effect | top-1 agreement |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for case, moments in rows.items():
        for moment, m in moments.items():
            label = {"before": "before (compact / raw input)", "after": "after (portable / exported)"}.get(moment, moment)
            print(
                f"| {case} | {label} | {m['error']:.2e} | {m['effect']:.3g} | {m['error_over_effect']:.2e} "
                f"| {m['shift_error_over_effect']:.2e} | {m['top1_agreement']:.0%} |"
            )


if __name__ == "__main__":
    main()
