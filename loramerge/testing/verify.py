"""An independent check of a merge: PEFT's own delta weights, summed by hand into the base model."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel

from loramerge.testing.tiny import load_model

PROBE_SEED = 1234
PROBE_SHAPE = (2, 12)  # two sequences of 12 tokens exercise attention across positions


def peft_delta_weights(base_folder: Path, adapter: Path) -> dict[str, torch.Tensor]:
    """Module name -> the update PEFT itself applies (scaling, rsLoRA and patterns included)."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    peft_model = PeftModel.from_pretrained(load_model(base_folder), str(adapter))
    deltas = {}
    for name, module in peft_model.base_model.model.named_modules():
        if isinstance(module, LoraLayer) and "default" in {**module.lora_A, **module.lora_embedding_A}:
            with torch.no_grad():
                deltas[name] = module.get_delta_weight("default").detach().clone()
    return deltas


def apply_weighted_deltas(base_folder: Path, adapters: list[Path], weights: list[float]) -> PreTrainedModel:
    """The base model with sum_i w_i * dW_i added to its weights."""
    model = load_model(base_folder)
    modules = dict(model.named_modules())
    for adapter, weight in zip(adapters, weights):
        for name, delta in peft_delta_weights(base_folder, adapter).items():
            with torch.no_grad():
                modules[name].weight += weight * delta
    return model


def probe_logits(model: PreTrainedModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(PROBE_SEED)
    tokens = torch.randint(0, model.config.vocab_size, PROBE_SHAPE, generator=generator)
    with torch.no_grad():
        return model(input_ids=tokens).logits


def merged_logits_gap(base_folder: Path, adapters: list[Path], weights: list[float], merged: Path) -> float:
    """Max |logit difference| between base + merged adapter (through PEFT) and base + sum w_i dW_i."""
    from peft import PeftModel

    expected = probe_logits(apply_weighted_deltas(base_folder, adapters, weights))
    actual = probe_logits(PeftModel.from_pretrained(load_model(base_folder), str(merged)))
    return float((expected - actual).abs().max())
