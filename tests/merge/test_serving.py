"""What each server would apply, computed from a written adapter by reference functions that follow the servers'
own code (cited below), compared with what PEFT applies. The portable layout (the default) must be served alike
by all of them; the compact layout must show the failures that made the portable one necessary (so these checks
can fail on a wrong layout).

- llama.cpp: convert_lora_to_gguf.py (ggml-org/llama.cpp @0b03ada) keeps one alpha, `alpha: float =
  lparams["lora_alpha"]`, and drops rank_pattern, alpha_pattern and use_rslora; at run time
  llama_adapter_lora_weight::get_scale (src/llama-adapter.h) scales by alpha / rank, the rank read from each B
  tensor (b->ne[0]).
- vLLM: vllm/lora/peft_helper.py (@0214369) lines 46-50: one scaling for every module, lora_alpha / r, or
  lora_alpha / sqrt(r) with use_rslora; from_dict keeps only PEFTHelper's fields (no patterns).
- TGI/LoRAX: one rank per module type across layers; a module type missing in a layer is dropped.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from loramerge import merge_adapters
from loramerge.cli.app import app
from loramerge.testing.verify import peft_delta_weights
from tests.helpers import adapter_tensors, copy_adapter, relative_error

PREFIX = "base_model.model."


def factors(adapter: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    tensors = adapter_tensors(adapter)
    return {
        key[len(PREFIX) : -len(".lora_A.weight")]: (tensor.double(), tensors[key.replace("lora_A", "lora_B")].double())
        for key, tensor in tensors.items()
        if key.endswith(".lora_A.weight")
    }


def llama_cpp_deltas(adapter: Path) -> dict[str, torch.Tensor]:
    """alpha from the config, divided by each tensor's own rank; no patterns, no rsLoRA."""
    alpha = float(json.loads((adapter / "adapter_config.json").read_text())["lora_alpha"])
    return {name: (alpha / b.shape[1]) * (b @ a) for name, (a, b) in factors(adapter).items()}


def vllm_deltas(adapter: Path, max_lora_rank: int = 64) -> dict[str, torch.Tensor]:
    """One scaling for every module from the config's r and lora_alpha; the rank limit is checked as vLLM does."""
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] <= max_lora_rank, "vLLM refuses r > max_lora_rank"
    scale = config["lora_alpha"] / (math.sqrt(config["r"]) if config.get("use_rslora") else config["r"])
    return {name: scale * (b @ a) for name, (a, b) in factors(adapter).items()}


def tgi_problems(adapter: Path) -> list[str]:
    """Module types whose rank differs across layers, or that are missing in a layer the adapter covers."""
    by_type: dict[str, dict[int, int]] = {}
    for name, (a, _) in factors(adapter).items():
        if (match := re.search(r"\.(\d+)\.", name)) is not None:
            by_type.setdefault(name[: match.start()] + ".N." + name[match.end() :], {})[int(match.group(1))] = a.shape[0]
    present_anywhere = {layer for present in by_type.values() for layer in present}
    layers = set(range(min(present_anywhere), max(present_anywhere) + 1)) if present_anywhere else set()  # the span covered
    problems = []
    for module, ranks in sorted(by_type.items()):
        if len(set(ranks.values())) > 1:
            problems.append(f"{module}: ranks {sorted(set(ranks.values()))}")
        if set(ranks) != layers:
            problems.append(f"{module}: missing in layers {sorted(layers - set(ranks))}")
    return problems


def worst_error(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> float:
    assert actual.keys() >= expected.keys()
    return max(relative_error(actual[name].float(), expected[name].float()) for name in expected)


def peft_deltas(base: Path, adapter: Path) -> dict[str, torch.Tensor]:
    return {name: delta for name, delta in peft_delta_weights(base, adapter).items() if delta.abs().sum() > 0}


@pytest.fixture(scope="module")
def layouts(tiny_base, task_adapter, align_adapter, tmp_path_factory) -> dict[str, Path]:
    """The project's core case in small: a full-depth task adapter + an rsLoRA alignment adapter on the lower
    layers with a rank pattern, merged exactly in both layouts."""
    root = tmp_path_factory.mktemp("layouts")
    recipe = {"sources": [{"path": str(task_adapter)}, {"path": str(align_adapter), "weight": 0.5}]}
    for layout in ("portable", "compact"):
        merge_adapters({**recipe, "layout": layout}, root / layout)
    return {layout: root / layout for layout in ("portable", "compact")}


def test_every_server_applies_what_peft_applies_to_the_portable_layout(tiny_base, layouts):
    expected = peft_deltas(tiny_base, layouts["portable"])
    assert worst_error(llama_cpp_deltas(layouts["portable"]), expected) < 1e-5
    assert worst_error(vllm_deltas(layouts["portable"]), expected) < 1e-5
    assert tgi_problems(layouts["portable"]) == []


def test_the_compact_layout_is_served_wrong_by_llama_cpp_and_tgi(tiny_base, layouts):
    expected = peft_deltas(tiny_base, layouts["compact"])
    assert worst_error(vllm_deltas(layouts["compact"]), expected) < 1e-5  # alpha / r is 1 everywhere: vLLM is fine
    assert worst_error(llama_cpp_deltas(layouts["compact"]), expected) > 0.3  # 8/12: a third too weak in layers 0-1
    assert any("ranks" in problem for problem in tgi_problems(layouts["compact"]))


def test_export_fixes_an_rslora_adapter_for_llama_cpp(tiny_base, align_adapter, tmp_path):
    """The raw rsLoRA adapter (alpha 8, r 4, a rank-2 pattern): llama.cpp ignores rsLoRA and the patterns."""
    expected = peft_deltas(tiny_base, align_adapter)
    assert worst_error(llama_cpp_deltas(align_adapter), expected) > 0.3
    result = CliRunner().invoke(app, ["export", str(align_adapter), "--out", str(tmp_path / "portable")])
    assert result.exit_code == 0, result.output
    assert worst_error(llama_cpp_deltas(tmp_path / "portable"), expected) < 1e-5
    assert worst_error(vllm_deltas(tmp_path / "portable"), expected) < 1e-5
    assert tgi_problems(tmp_path / "portable") == []


def test_export_with_rank_recompresses_optimally(tiny_base, task_adapter, tmp_path):
    result = CliRunner().invoke(app, ["export", str(task_adapter), "--rank", "3", "--out", str(tmp_path / "r3")])
    assert result.exit_code == 0, result.output
    actual, expected = llama_cpp_deltas(tmp_path / "r3"), peft_deltas(tiny_base, task_adapter)
    for name, target in expected.items():
        singular = torch.linalg.svdvals(target.double())
        optimum = (singular[3:] ** 2).sum().sqrt() / singular.norm()
        assert relative_error(actual[name].float(), target.float()) == pytest.approx(optimum.item(), rel=1e-3), name


def test_a_module_type_missing_in_a_covered_layer_is_filled_with_zeros(tiny_base, make_adapter, tmp_path):
    gappy = make_adapter("gappy", seed=9, r=4, lora_alpha=4, target_modules=["q_proj"], layers_to_transform=[0, 2])
    merge_adapters({"sources": [{"path": str(gappy)}]}, tmp_path / "m")
    assert tgi_problems(gappy) == ["model.layers.N.self_attn.q_proj: missing in layers [1]"]
    assert tgi_problems(tmp_path / "m") == []
    report = json.loads((tmp_path / "m" / "merge_report.json").read_text())
    assert report["layout"]["zero_filled_modules"] == ["model.layers.1.self_attn.q_proj"]
    expected = peft_deltas(tiny_base, gappy)
    assert worst_error(peft_deltas(tiny_base, tmp_path / "m"), expected) < 1e-5


def test_export_refuses_an_out_folder_inside_its_input(task_adapter, tmp_path):
    """It nested an adapter inside the input folder; now one line, exit 2, nothing written."""
    source = copy_adapter(task_adapter, tmp_path / "source")
    before = sorted(p.name for p in source.iterdir())
    result = CliRunner().invoke(app, ["export", str(source), "--out", str(source / "exported")])
    assert result.exit_code == 2 and "inside the input adapter folder" in result.stderr
    assert sorted(p.name for p in source.iterdir()) == before


def test_a_rank_warning_names_the_command_that_fixes_it(make_adapter, tmp_path):
    wide = make_adapter("rank24", seed=7, r=24, lora_alpha=24)
    result = CliRunner().invoke(app, ["export", str(wide), "--out", str(tmp_path / "wide")])
    assert result.exit_code == 0, result.output
    assert "export --rank 16" in " ".join(result.stderr.split())
