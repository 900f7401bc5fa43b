"""Tiny random decoders of three architectures, built from configs with a fixed seed (no network).

Llama is the plain case; Qwen2 adds biases on q/k/v; Gemma3 scales its embeddings, normalises q/k,
mixes sliding-window and full attention and ties the LM head to the embeddings. Code that must work
on "every decoder" is tested on all three.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    Qwen2Config,
)

from loramerge.testing.tiny import TINY_LLAMA

# hidden 64, 4 layers, 4 query heads and 2 key/value heads (GQA), vocab 128, intermediate 96.
SHAPE = dict(TINY_LLAMA)


def llama_config() -> LlamaConfig:
    return LlamaConfig(**SHAPE)


def qwen2_config() -> Qwen2Config:
    return Qwen2Config(**SHAPE)


def gemma3_config() -> Gemma3TextConfig:
    return Gemma3TextConfig(
        **SHAPE,
        head_dim=16,  # Gemma's default is 256, not hidden/heads
        query_pre_attn_scalar=16,
        # A window shorter than the test sequences, alternating with full attention, so both mask
        # kinds are exercised.
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )


CONFIGS: dict[str, Callable[[], PretrainedConfig]] = {
    "llama": llama_config,
    "qwen2": qwen2_config,
    "gemma3": gemma3_config,
}
ARCHITECTURES = list(CONFIGS)


def build_tiny(architecture: str, seed: int = 0) -> PreTrainedModel:
    """A freshly initialised fp32 model in eval mode; the same seed gives the same weights."""
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[architecture](), dtype=torch.float32)
    return model.eval()


def random_batch(batch: int = 3, length: int = 9, seed: int = 0, vocab: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) with right padding: row i has `length - i` real tokens (at least 1)."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(3, vocab, (batch, length), generator=generator)
    lengths = torch.tensor([max(length - i, 1) for i in range(batch)])
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return input_ids.masked_fill(attention_mask == 0, 0), attention_mask
