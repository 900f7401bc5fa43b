"""A frozen embedding and tied head swapped for exact int8-group modules: the model computes the same bits."""

from __future__ import annotations

import pytest
import torch

from loramerge.models.compact_vocabulary import CompactEmbedding, CompactLinear, compact_vocabulary
from loramerge.models.lm_head import find_lm_head
from tests.models.test_int8_groups import q8_0_matrix
from tests.tiny_configs import build_tiny, random_batch


def with_q8_0_vocabulary(architecture: str) -> torch.nn.Module:
    model = build_tiny(architecture)
    embedding = model.get_input_embeddings()
    with torch.no_grad():
        embedding.weight.copy_(q8_0_matrix(*embedding.weight.shape, seed=3))
    model.requires_grad_(False)
    return model


# gemma3: embeddings scaled by sqrt(hidden), head tied to them; llama: an untied float32 head that stays as it is
@pytest.mark.parametrize("architecture", ["llama", "gemma3"])
def test_logits_and_embeddings_are_bit_identical_after_the_swap(architecture):
    model = with_q8_0_vocabulary(architecture)
    ids, mask = random_batch()
    embedded = model.get_input_embeddings()(ids)
    logits = model(input_ids=ids, attention_mask=mask).logits
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    released = compact_vocabulary(model)
    assert isinstance(model.get_input_embeddings(), CompactEmbedding)
    assert isinstance(model.get_output_embeddings(), CompactLinear) == tied
    assert len(released) == 1 and released[0].shape == model.get_input_embeddings().matrix.shape
    assert torch.equal(model.get_input_embeddings()(ids), embedded)
    assert torch.equal(model(input_ids=ids, attention_mask=mask).logits, logits)
    head = find_lm_head(model)  # the trainer's fused loss reads the compact rows through it
    assert head is not None
    expected = released[0] if tied else model.get_output_embeddings().weight
    assert torch.equal(head.weight.rows(0, 10) if tied else head.weight[:10], expected[:10])


def test_a_float32_vocabulary_or_a_trainable_embedding_stays_as_it_is():
    model = build_tiny("llama").requires_grad_(False)
    embedding = model.get_input_embeddings()
    assert compact_vocabulary(model) == [] and model.get_input_embeddings() is embedding
    model = with_q8_0_vocabulary("llama")
    model.get_input_embeddings().weight.requires_grad_(True)
    assert compact_vocabulary(model) == [] and type(model.get_output_embeddings()) is torch.nn.Linear
