"""How a merged adapter is laid out on disk, so that every server applies the same update PEFT does.

PEFT reads `rank_pattern`/`alpha_pattern` and scales each module by its own alpha / r. The servers do not
(docs/design.md section 3; their code, read at the commits named):
- llama.cpp: convert_lora_to_gguf.py stores the single `lora_alpha = lparams["lora_alpha"]` (ggml-org/llama.cpp
  @0b03ada, the `alpha: float = lparams["lora_alpha"]` line before `LoraModel(...)`), and at run time
  `llama_adapter_lora_weight::get_scale` multiplies by alpha / (that tensor's rank, b->ne[0]): a module whose
  rank differs from the rank alpha was meant for is served at the wrong strength (half, for the default
  task + alignment merge), and rsLoRA is ignored.
- vLLM: PEFTHelper (vllm/lora/peft_helper.py @0214369, lines 46-50) computes one scaling, lora_alpha / r
  (lora_alpha / sqrt(r) with use_rslora), for every module; from_dict drops rank_pattern and alpha_pattern.
- TGI/LoRAX: one rank per module type across layers, and a module type missing in a layer is dropped.
The portable layout satisfies all of them: every module zero-padded to one rank R (padding adds zero rows to A
and zero columns to B, so B @ A is unchanged), `r = lora_alpha = R` (scale 1; the merge folds every scale into
B), no patterns, rsLoRA off, and every module type present in every layer between the first and the last the
output covers (missing ones as zero factors). The compact layout keeps per-module ranks with patterns: PEFT and
vLLM serve it exactly (its alpha/r is 1 everywhere), llama.cpp and TGI/LoRAX do not.
"""

from __future__ import annotations

from typing import Literal

import torch

from loramerge.merge.layer_weights import LAYER_INDEX

Layout = Literal["portable", "compact"]
SERVED_BY: dict[str, list[str]] = {
    "portable": ["PEFT", "vLLM", "llama.cpp", "TGI", "LoRAX"],
    "compact": ["PEFT", "vLLM"],
}


def pad_factors(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (r x in) and B (out x r) zero-padded to `rank`: the product B @ A is exactly unchanged."""
    extra = rank - a.shape[0]
    if extra <= 0:
        return a, b
    return torch.cat([a, a.new_zeros(extra, a.shape[1])]), torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1)


def module_type(name: str) -> tuple[str, int] | None:
    """'model.layers.3.mlp.up_proj' -> ('model.layers.{}.mlp.up_proj', 3); None outside the layer stack."""
    match = LAYER_INDEX.search(name)  # the first .N. is the layer index, as for layer rules
    if match is None:
        return None
    return name[: match.start()] + ".{}." + name[match.end() :], int(match.group(1))


def missing_in_layers(names: list[str]) -> dict[str, str]:
    """Modules that TGI/LoRAX need present: {missing name: an existing name of the same type}, for every module
    type and every layer from the first to the last that any module of the output sits in."""
    by_type: dict[str, dict[int, str]] = {}
    for name in names:
        if (found := module_type(name)) is not None:
            by_type.setdefault(found[0], {})[found[1]] = name
    layers = [layer for present in by_type.values() for layer in present]
    if not layers:
        return {}
    missing = {}
    for template, present in by_type.items():
        example = next(iter(present.values()))
        for layer in range(min(layers), max(layers) + 1):
            if layer not in present:
                missing[template.replace("{}", str(layer), 1)] = example
    return missing


def same_place_key(key: str, example_name: str, name: str) -> str:
    """The tensor key of `name`, made from the key of a module of the same type."""
    return key.replace(example_name, name, 1)
