"""LayerExit: the same states as transformers' hidden_states, nothing above layer k runs, gradients
reach exactly the blocks below k, and nothing is left behind (hooks, stops) after a call."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn
from torch.utils.checkpoint import checkpoint

from loramerge.errors import LoramergeError
from loramerge.models.layer_exit import LayerExit, decoder_layers, default_layer, num_decoder_layers
from loramerge.models.pooling import mean_pool
from loramerge.testing.tiny import ALL_LINEAR, randomize_trainable
from tests.tiny_configs import ARCHITECTURES, build_tiny, random_batch

LAYERS = 4  # tests/tiny_configs.py


def with_lora(model: nn.Module, seed: int = 1) -> PeftModel:
    """A LoRA on every linear projection of every block, with random non-zero A and B (B starts at zero
    in PEFT, which would leave A's gradient zero and hide a broken path)."""
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_LINEAR))
    randomize_trainable(peft_model, seed=seed)
    return peft_model


def lora_grads_by_block(model: nn.Module) -> list[dict[str, torch.Tensor | None]]:
    return [
        {name: parameter.grad for name, parameter in block.named_parameters() if parameter.requires_grad}
        for block in decoder_layers(model)
    ]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_finds_the_block_list_directly_and_through_peft(architecture: str) -> None:
    model = build_tiny(architecture)
    assert decoder_layers(model) is model.model.layers
    assert num_decoder_layers(model) == LAYERS
    assert decoder_layers(with_lora(model)) is model.model.layers  # PEFT wraps in place


def test_no_block_list_is_a_clear_error() -> None:
    with pytest.raises(LoramergeError, match="num_hidden_layers"):
        decoder_layers(nn.Linear(2, 2))
    model = build_tiny("llama")
    model.config.num_hidden_layers = 7
    with pytest.raises(LoramergeError, match="num_hidden_layers=7 modules, found 0"):
        decoder_layers(model)


def test_default_layer_is_the_middle_rounded_half_up() -> None:
    assert [default_layer(n) for n in (32, 18, 30, 4, 5, 7, 1)] == [16, 9, 15, 2, 3, 4, 1]
    with pytest.raises(LoramergeError):
        default_layer(0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_equals_transformers_hidden_states_below_the_top(architecture: str) -> None:
    model = build_tiny(architecture)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        reference = model(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states
        for layer in range(LAYERS):
            torch.testing.assert_close(LayerExit(model, layer)(input_ids, attention_mask), reference[layer], atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_layer_count_is_the_last_block_before_the_final_norm(architecture: str) -> None:
    model = build_tiny(architecture)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        reference = model(input_ids, attention_mask=attention_mask, output_hidden_states=True).hidden_states[LAYERS]
        top = LayerExit(model, LAYERS)(input_ids, attention_mask)
        torch.testing.assert_close(model.model.norm(top), reference, atol=1e-5, rtol=0)
    assert not torch.allclose(top, reference, atol=1e-2)


@pytest.mark.parametrize("layer", [-1, LAYERS + 1])
def test_out_of_range_layer_is_refused(layer: int) -> None:
    with pytest.raises(LoramergeError, match=f"from 0 .* to {LAYERS}"):
        LayerExit(build_tiny("llama"), layer)


def count_calls(modules: dict[str, nn.Module]) -> tuple[dict[str, int], Callable[[], None]]:
    calls = dict.fromkeys(modules, 0)

    def counter(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _args: tuple, _output: object) -> None:
            calls[name] += 1

        return hook

    # Post-forward hooks count completed calls: a pre-hook would also count block 0 for k = 0, where
    # LayerExit stops in block 0's own pre-hook, before its forward.
    handles = [module.register_forward_hook(counter(name)) for name, module in modules.items()]
    return calls, lambda: [handle.remove() for handle in handles]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("layer", [0, 2, LAYERS])
def test_blocks_from_k_up_and_the_lm_head_do_not_run(architecture: str, layer: int) -> None:
    model = with_lora(build_tiny(architecture))
    blocks = decoder_layers(model)
    watched = {f"block{i}": block for i, block in enumerate(blocks)}
    watched["norm"] = model.base_model.model.model.norm
    watched["lm_head"] = model.get_output_embeddings()
    calls, remove = count_calls(watched)
    LayerExit(model, layer)(*random_batch())
    remove()
    expected = {f"block{i}": int(i < layer) for i in range(LAYERS)} | {"norm": 0, "lm_head": 0}
    assert calls == expected


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradients_reach_exactly_the_blocks_below_k(architecture: str) -> None:
    model = with_lora(build_tiny(architecture))
    input_ids, attention_mask = random_batch()
    layer = 2
    mean_pool(LayerExit(model, layer)(input_ids, attention_mask), attention_mask, skip_first=True).pow(2).sum().backward()
    for index, grads in enumerate(lora_grads_by_block(model)):
        assert grads, "LoRA should wrap every block"
        for name, grad in grads.items():
            if index < layer:
                assert grad is not None and grad.abs().sum() > 0, f"block {index} {name}"
            else:
                assert grad is None, f"block {index} {name}"


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_gradient_checkpointing_gives_the_same_gradients(architecture: str) -> None:
    """Non-reentrant checkpointing recomputes blocks during backward: the stop must not fire again."""
    input_ids, attention_mask = random_batch()

    def grads(checkpointing: bool) -> list[dict[str, torch.Tensor | None]]:
        base = build_tiny(architecture)
        if checkpointing:
            enable_non_reentrant_checkpointing(base)
        model = with_lora(base).train()
        exit_at = LayerExit(model, 3)
        # Entries into block 0's attention: the checkpoint's recompute stops early once it has what
        # backward needs, so it may never finish a submodule (a post-forward hook would miss it).
        entries = []
        handle = decoder_layers(model)[0].self_attn.register_forward_pre_hook(lambda *_: entries.append(1))
        for _ in range(2):  # a second call must find the stop armed again
            mean_pool(exit_at(input_ids, attention_mask), attention_mask, skip_first=False).pow(2).sum().backward()
        handle.remove()
        assert len(entries) == (4 if checkpointing else 2), "checkpointing recomputes each block once in backward"
        return lora_grads_by_block(model)

    plain, checkpointed = grads(False), grads(True)
    assert plain[0] and plain[3]
    for plain_block, checkpointed_block in zip(plain, checkpointed):
        assert plain_block.keys() == checkpointed_block.keys()
        for name, grad in plain_block.items():
            if grad is None:
                assert checkpointed_block[name] is None
            else:
                torch.testing.assert_close(checkpointed_block[name], grad, atol=1e-5, rtol=1e-4)


class CheckpointedToyDecoder(nn.Module):
    """A minimal decoder that checkpoints each block's __call__, hooks included, as transformers 4.x
    does: the hook that stops the forward then runs inside the checkpoint, and again on recompute."""

    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(num_hidden_layers=3)
        self.embed = nn.Embedding(10, 4)
        self.layers = nn.ModuleList(nn.Linear(4, 4) for _ in range(3))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, use_cache: bool = False) -> torch.Tensor:
        hidden = self.embed(input_ids)
        for block in self.layers:
            hidden = checkpoint(block.__call__, hidden, use_reentrant=False)
        return hidden


def test_stop_inside_a_checkpointed_block() -> None:
    torch.manual_seed(0)
    model = CheckpointedToyDecoder()
    input_ids = torch.tensor([[1, 2, 3]])
    hidden = LayerExit(model, 2)(input_ids, torch.ones_like(input_ids))
    torch.testing.assert_close(hidden, model.layers[1](model.layers[0](model.embed(input_ids))))
    hidden.pow(2).sum().backward()
    assert model.layers[0].weight.grad.abs().sum() > 0 and model.layers[2].weight.grad is None
    assert model(input_ids, torch.ones_like(input_ids)).shape == (1, 3, 4)


def enable_non_reentrant_checkpointing(model: nn.Module) -> None:
    # transformers 5 renamed gradient_checkpointing_enable (deprecated, same effect); 4.x has only the old name.
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def hook_counts(model: nn.Module) -> list[tuple[int, int]]:
    return [(len(module._forward_hooks), len(module._forward_pre_hooks)) for module in model.modules()]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_leaves_no_state_behind(architecture: str) -> None:
    model = build_tiny(architecture)
    input_ids, attention_mask = random_batch()
    with torch.no_grad():
        # transformers installs its output-recording hooks on the first output_hidden_states call
        model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        before_hooks = hook_counts(model)
        before = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        for layer in (0, 2, LAYERS):
            LayerExit(model, layer)(input_ids, attention_mask)
        with pytest.raises(IndexError):  # a forward that fails for its own reasons still removes the hook
            LayerExit(model, 2)(input_ids + 1000, attention_mask)
        assert hook_counts(model) == before_hooks
        calls, remove = count_calls({"lm_head": model.get_output_embeddings()})
        after = model(input_ids, attention_mask=attention_mask, output_hidden_states=True)
        remove()
    assert calls == {"lm_head": 1}
    torch.testing.assert_close(after.logits, before.logits, atol=0, rtol=0)
    assert len(after.hidden_states) == LAYERS + 1


class PooledStates(nn.Module):
    """How the training loop uses LayerExit: inside the forward of a module that DDP wraps."""

    def __init__(self, model: nn.Module, layer: int) -> None:
        super().__init__()
        self.model = model
        self.exit_at = LayerExit(model, layer)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return mean_pool(self.exit_at(input_ids, attention_mask), attention_mask, skip_first=True)


def test_runs_inside_a_ddp_owned_forward(tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model = with_lora(build_tiny("llama"))
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        # Blocks >= k get no gradient: DDP has to be told, as the LayerExit docstring says.
        wrapped = DistributedDataParallel(PooledStates(model, 2), find_unused_parameters=True)
        for _ in range(2):
            wrapped(*random_batch()).pow(2).sum().backward()
    finally:
        dist.destroy_process_group()
    grads = lora_grads_by_block(model)
    assert all(grad is not None for grad in grads[1].values())
    assert all(grad is None or grad.abs().sum() == 0 for grad in grads[2].values())
