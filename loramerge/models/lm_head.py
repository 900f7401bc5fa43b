"""A causal LM split into its decoder and its LM head, verified against the model's own forward.

The trainer's fused task loss (`loramerge.train.fused_head_loss`) projects only the supervised positions'
final states, a chunk at a time, so it must reproduce exactly what the model's forward does between the
decoder's last state and the logits. Architectures differ there: a plain linear head (Llama, Qwen2,
SmolLM2, Gemma 3), soft-capping (Gemma 2: 30 * tanh(logits / 30)), a logit scale (Cohere, Granite), a
LoRA on the head. Rather than keep a list of model types, `find_lm_head` runs a few tokens through both
routes once and accepts the split only when the logits agree; anything else keeps the model's own
forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from loramerge.models.compact_vocabulary import CompactLinear
from loramerge.models.int8_groups import Int8Groups

# Relative agreement asked of the two routes' logits: both compute the same float32 products, so they differ
# only by summation order (~1e-6 relative); a missed scale or cap is off by >= 1e-2.
AGREEMENT = 1e-4
PROBE_TOKENS = 5


@dataclass(frozen=True)
class LMHead:
    decoder: nn.Module  # maps input_ids, attention_mask -> an output with .last_hidden_state
    linear: nn.Linear | CompactLinear
    softcap: float | None

    @property
    def weight(self) -> torch.Tensor | Int8Groups:
        """The head's [vocabulary x hidden] weight: a tensor, or exact int8 groups (models/compact_vocabulary.py)."""
        return self.linear.matrix if isinstance(self.linear, CompactLinear) else self.linear.weight


def soft_capped(logits: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """Final-logit soft-capping, softcap * tanh(logits / softcap), as transformers applies it (Gemma 2)."""
    return logits if softcap is None else torch.tanh(logits / softcap) * softcap


def _softcap_of(model: nn.Module) -> float | None:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    value = getattr(config, "final_logit_softcapping", None)
    return float(value) if value else None


def _candidate(model: nn.Module) -> LMHead | None:
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    decoder, linear = get_decoder(), get_head()
    # type() is: a LoRA-wrapped or otherwise subclassed head computes something else than weight @ x + bias
    if decoder is None or decoder is model or type(linear) not in (nn.Linear, CompactLinear):
        return None
    return LMHead(decoder=decoder, linear=linear, softcap=_softcap_of(model))


@torch.no_grad()
def _agrees(model: nn.Module, head: LMHead) -> bool:
    was_training = model.training
    model.eval()  # dropout would make the two routes differ for no reason
    try:
        device = head.weight.device
        ids = torch.arange(1, PROBE_TOKENS + 1, device=device)[None, :] % head.linear.out_features
        mask = torch.ones_like(ids)
        reference = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        state = head.decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        split = soft_capped(head.linear(state).float(), head.softcap)
    except (TypeError, AttributeError, ValueError, RuntimeError):  # a decoder with another calling convention
        return False
    finally:
        model.train(was_training)
    scale = reference.abs().max().clamp(min=1e-6)
    return reference.shape == split.shape and bool(((reference - split).abs().max() / scale) < AGREEMENT)


def find_lm_head(model: nn.Module) -> LMHead | None:
    """The decoder and linear head of a transformers causal LM (unwrapped from PEFT), or None when the model's
    logits are not soft_capped(head(decoder(x))) for a plain nn.Linear head, checked on a short input."""
    head = _candidate(model)
    return head if head is not None and _agrees(model, head) else None
