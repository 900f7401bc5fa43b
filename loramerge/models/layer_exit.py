"""Run a decoder LLM only up to hidden-states index k: the alignment loss needs nothing above it.

The reference code (docs/design.md section 4) runs the whole model and the LM head to read layer k; for
k = L/2 that is about half the compute of an alignment step wasted. Here a hook on the block that
produces hidden_states[k] stores it and raises a private exception that ends the forward pass.
Hooks are public nn.Module API, so every decoder architecture in transformers works, unforked.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from loramerge.errors import LoramergeError


class _StopForward(BaseException):
    """Ends a forward pass once the wanted hidden state is captured.

    A BaseException (like GeneratorExit), not an Exception: it is control flow, and an
    `except Exception` fallback somewhere in model code must not swallow it and run the upper layers.
    """

    def __init__(self, token: object) -> None:
        super().__init__("LayerExit stop (internal; always caught by LayerExit)")
        self.token = token


def _num_hidden_layers(model: nn.Module) -> int:
    # PeftModel forwards attribute access to the wrapped model, so `.config` works through it too.
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()  # multimodal models keep the decoder's depth in a sub-config
    layers = getattr(config, "num_hidden_layers", None)
    if not isinstance(layers, int):
        raise LoramergeError(
            f"cannot find the decoder depth of {type(model).__name__}: expected a transformers model (or a PEFT model "
            "wrapping one) whose config has num_hidden_layers; pass the unwrapped model, not a DDP/accelerate wrapper"
        )
    return layers


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks: the nn.ModuleList whose length is the text config's num_hidden_layers.

    Found by shape rather than by attribute path (`model.model.layers`, `transformer.h`, ...) so that any
    architecture and any wrapper (PeftModel adds `base_model.model.` in front) works.
    """
    depth = _num_hidden_layers(model)
    found: list[tuple[str, nn.ModuleList]] = []
    for name, module in model.named_modules():
        if not (isinstance(module, nn.ModuleList) and len(module) == depth):
            continue
        # named_modules is pre-order: skip lists inside an already found one (an MoE block may hold
        # exactly `depth` experts); they are parts of a block, not the block list.
        if any(name.startswith(outer + ".") for outer, _ in found):
            continue
        found.append((name, module))
    if len(found) > 1:
        # e.g. a vision tower as deep as the text decoder: transformers calls the decoder's list "layers"
        named_layers = [(name, module) for name, module in found if name.rsplit(".", 1)[-1] == "layers"]
        found = named_layers or found
    if len(found) != 1:
        where = ", ".join(name for name, _ in found) if found else "none"
        raise LoramergeError(
            f"cannot find the decoder blocks of {type(model).__name__}: expected exactly one nn.ModuleList of "
            f"num_hidden_layers={depth} modules, found {len(found)} ({where}); this architecture is not supported"
        )
    return found[0][1]


def num_decoder_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def default_layer(num_layers: int) -> int:
    """The default alignment layer: the middle, rounding half up, i.e. (L + 1) // 2.

    Not Python's round(), whose banker's rounding sends odd depths sometimes down (round(4.5) = 4) and
    sometimes up (round(3.5) = 4). Half up gives the paper's 16 of 32, 9 of Gemma-3-270M's 18, 15 of
    SmolLM2's 30, leans away from the low layers that hurt in the paper (8 of 32), and is never 0
    (the embeddings, which LoRA on the blocks cannot change) for a model with at least one block.
    """
    if num_layers < 1:
        raise LoramergeError(f"a decoder needs at least one layer to align, got num_layers={num_layers}")
    return (num_layers + 1) // 2


def _first_tensor(value: Any) -> torch.Tensor:
    # Decoder blocks return a tensor in transformers 5 and a tuple (hidden, attentions, ...) in 4.x.
    return value[0] if isinstance(value, (tuple, list)) else value


class LayerExit:
    """hidden_states[k] of a decoder without running block k or anything above it (LM head included).

    Index convention as in transformers' `output_hidden_states`: 0 is the input of block 0 (the
    embeddings, scaled where the architecture scales them), k >= 1 is the output of block k-1.
    `LayerExit(model, k)(ids, mask)` equals `model(ids, attention_mask=mask,
    output_hidden_states=True).hidden_states[k]` for 0 <= k < L. k = L is allowed and returns the
    output of the last block BEFORE the final norm, whereas transformers' hidden_states[L] is after it.

    Safe inside an nn.Module.forward owned by DDP: the stop never escapes the call, and the hook is
    removed before returning, also when the forward fails. Blocks >= k get no gradient, so a DDP wrapper
    needs find_unused_parameters=True (or static_graph=True) when they hold trainable parameters.
    """

    def __init__(self, model: nn.Module, layer: int) -> None:
        blocks = decoder_layers(model)
        if not 0 <= layer <= len(blocks):
            raise LoramergeError(
                f"alignment layer {layer} is out of range for a model with {len(blocks)} decoder layers: use a "
                f"hidden-states index from 0 (embeddings) to {len(blocks)} (last block); the default is "
                f"{default_layer(len(blocks))}"
            )
        self.model = model
        self.layer = layer
        self._block: nn.Module = blocks[0] if layer == 0 else blocks[layer - 1]

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        token = object()  # tells our stop apart from that of another LayerExit on the same model
        armed = True

        def capture_and_stop(hidden: torch.Tensor) -> None:
            nonlocal armed
            # Fire once per call: with gradient checkpointing a block can run again during backward
            # (transformers 4.x checkpoints inside the hooks); that recomputation must not stop.
            if not armed:
                return
            armed = False
            captured.append(hidden)
            raise _StopForward(token)

        if self.layer == 0:
            handle = self._block.register_forward_pre_hook(
                lambda _module, args, kwargs: capture_and_stop(_first_tensor(args) if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
        else:
            handle = self._block.register_forward_hook(lambda _module, _args, output: capture_and_stop(_first_tensor(output)))
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward as stop:
            if stop.token is not token:
                raise
            # Leaving this block drops the exception and its traceback, and with them the frames of the
            # interrupted forward (a non-reentrant checkpoint's context among them), right away.
        finally:
            armed = False
            handle.remove()
        if not captured:
            raise LoramergeError(
                f"{type(self.model).__name__} finished a forward pass without running the block that produces "
                f"hidden_states[{self.layer}]; this architecture does not call its decoder blocks in order"
            )
        return captured[0]
