"""find_lm_head accepts a decoder + head split only when it reproduces the model's own logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, Gemma2Config

from loramerge.models.lm_head import find_lm_head
from loramerge.testing.tiny import TINY_LLAMA, load_model
from tests.tiny_configs import ARCHITECTURES, build_tiny


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_plain_heads_are_found(architecture: str) -> None:
    model = build_tiny(architecture)
    head = find_lm_head(model)
    assert head is not None and head.linear is model.get_output_embeddings() and head.softcap is None


def test_gemma2_soft_capping_is_read_and_verified() -> None:
    torch.manual_seed(0)
    config = Gemma2Config(**TINY_LLAMA, head_dim=16, final_logit_softcapping=0.5)  # a cap that bites on random logits
    head = find_lm_head(AutoModelForCausalLM.from_config(config))
    assert head is not None and head.softcap == 0.5


def test_a_config_that_does_not_match_the_forward_is_refused(tiny_base: Path) -> None:
    """Llama's forward ignores final_logit_softcapping: the split would cap what the model does not."""
    model = load_model(tiny_base)
    model.config.final_logit_softcapping = 0.5
    assert find_lm_head(model) is None


def test_a_lora_on_the_head_is_refused(tiny_base: Path) -> None:
    model = get_peft_model(load_model(tiny_base), LoraConfig(r=2, target_modules=["q_proj", "lm_head"]))
    assert find_lm_head(model.get_base_model()) is None


def test_the_probe_leaves_training_mode_as_it_was(tiny_base: Path) -> None:
    model = load_model(tiny_base)
    model.train()
    assert find_lm_head(model) is not None and model.training
