"""Tiny random models and adapters built from configs: for tests, the benchmark and the merge example.

Nothing is downloaded: the model is built from a config with a fixed seed and saved locally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel

# Small enough that a forward pass takes milliseconds on a CPU, big enough to have GQA
# (4 query heads, 2 key/value heads) so q/k/v shapes differ like in real models.
TINY_LLAMA = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def save_tiny_llama(folder: Path, seed: int = 0, **overrides: Any) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(LlamaConfig(**{**TINY_LLAMA, **overrides}))
    model.save_pretrained(folder)
    return folder


def load_model(folder: Path) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def randomize_trainable(model: torch.nn.Module, seed: int, std: float = 0.05) -> None:
    """LoRA's B starts at zero and modules_to_save start as copies of the base: give every trainable
    tensor random values, as training would, so each adapter's update is non-zero and distinct."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def make_random_adapter(base_folder: Path, out: Path, seed: int, **lora_options: Any) -> Path:
    """A PEFT LoRA adapter made by PEFT itself, with random non-zero factors."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(load_model(base_folder), LoraConfig(**lora_options))
    randomize_trainable(model, seed)
    model.save_pretrained(out)
    return out
