"""Merged adapters load in PEFT exactly as written and behave like the weighted sum in the model."""

from __future__ import annotations

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict

from loramerge import merge_adapters
from loramerge.testing.tiny import load_model
from loramerge.testing.verify import merged_logits_gap, peft_delta_weights
from tests.helpers import adapter_tensors, relative_error, tensor_keys, weighted_sum


def sources(*pairs):
    return {"sources": [{"path": str(path), "weight": weight} for path, weight in pairs]}


def test_output_keys_are_exactly_what_peft_expects(tiny_base, task_adapter, align_adapter, attention_adapter, tmp_path):
    out = tmp_path / "m"
    merge_adapters(sources((task_adapter, 1.0), (align_adapter, 0.5), (attention_adapter, 1.0)), out)
    config = LoraConfig.from_pretrained(str(out))
    model = get_peft_model(load_model(tiny_base), config)
    expected = {f"base_model.model.{key}" for key in get_peft_model_state_dict(model)}
    expected = {key.replace("base_model.model.base_model.model.", "base_model.model.") for key in expected}
    assert tensor_keys(out) == expected


def test_merged_logits_equal_base_plus_weighted_updates(tiny_base, task_adapter, align_adapter, attention_adapter, tmp_path):
    adapters, weights = [task_adapter, align_adapter, attention_adapter], [0.8, -0.4, 0.6]
    out = tmp_path / "m"
    merge_adapters(sources(*zip(adapters, weights)), out)
    assert merged_logits_gap(tiny_base, adapters, weights, out) < 1e-5


def test_rslora_and_patterns_are_folded_into_the_factors(tiny_base, align_adapter, tmp_path):
    out = tmp_path / "m"
    merge_adapters({**sources((align_adapter, 2.0)), "layout": "compact"}, out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["use_rslora"] is False
    assert config["lora_alpha"] == config["r"] == 4
    assert config["rank_pattern"] == config["alpha_pattern"] == {"model.layers.1.mlp.down_proj": 2}
    # align_adapter was trained on layers 0-1 only: the output lists exactly those modules by name
    assert all(name.startswith(("model.layers.0.", "model.layers.1.")) for name in config["target_modules"])


def test_modules_to_save_are_carried_through_as_trained(tiny_base, make_adapter, task_adapter, tmp_path):
    head = make_adapter("with-head", seed=5, r=4, lora_alpha=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    out = tmp_path / "m"
    result = merge_adapters(sources((task_adapter, 1.0), (head, 1.0)), out)
    trained = adapter_tensors(head)["base_model.model.lm_head.weight"]
    assert torch.equal(adapter_tensors(out)["base_model.model.lm_head.weight"], trained)
    model = PeftModel.from_pretrained(load_model(tiny_base), str(out))
    assert torch.equal(model.base_model.model.lm_head.modules_to_save["default"].weight, trained)
    assert any("vLLM rejects" in warning for warning in result.warnings)


def test_linear_reproduces_peft_add_weighted_adapter(tiny_base, make_adapter, tmp_path):
    first = make_adapter("linear-a", seed=6, r=4, lora_alpha=8)
    second = make_adapter("linear-b", seed=7, r=4, lora_alpha=16, use_rslora=True)
    out = tmp_path / "m"
    report = merge_adapters({**sources((first, 0.7), (second, -0.5)), "method": "linear"}, out).report
    model = PeftModel.from_pretrained(load_model(tiny_base), str(first), adapter_name="a")
    model.load_adapter(str(second), adapter_name="b")
    model.add_weighted_adapter(["a", "b"], [0.7, -0.5], "m", combination_type="linear")
    ours = peft_delta_weights(tiny_base, out)
    for name, module in model.base_model.model.named_modules():
        if name in ours:
            assert relative_error(ours[name], module.get_delta_weight("m")) < 1e-5, name
    # and it is not the weighted sum, which the report says
    assert report["max_relative_error"] > 0.1


def test_output_dtype(task_adapter, tmp_path):
    merge_adapters({**sources((task_adapter, 1.0)), "dtype": "bfloat16"}, tmp_path / "m")
    assert {t.dtype for t in adapter_tensors(tmp_path / "m").values()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "method", ["ties", "dare_ties", "dare_linear", "magnitude_prune", "knots_ties", "core_ties", "core_dare"]
)
def test_sparsifying_methods_are_seeded_and_deterministic(task_adapter, attention_adapter, tmp_path, method):
    recipe = {**sources((task_adapter, 1.0), (attention_adapter, 1.0)), "method": method, "density": 0.3, "rank": 6}
    merge_adapters(recipe, tmp_path / "one")
    merge_adapters(recipe, tmp_path / "two")
    one, two = (adapter_tensors(tmp_path / name) for name in ("one", "two"))
    assert one.keys() == two.keys() and all(torch.equal(one[key], two[key]) for key in one)
    if "dare" in method:  # the seed decides which entries DARE drops
        merge_adapters({**recipe, "seed": 1}, tmp_path / "other-seed")
        other = adapter_tensors(tmp_path / "other-seed")
        assert any(not torch.equal(one[key], other[key]) for key in one)


def test_ties_of_one_adapter_at_full_density_is_that_adapter(tiny_base, task_adapter, tmp_path):
    merge_adapters({**sources((task_adapter, 1.0)), "method": "ties", "density": 1.0}, tmp_path / "m")
    actual, expected = peft_delta_weights(tiny_base, tmp_path / "m"), peft_delta_weights(tiny_base, task_adapter)
    for name in expected:
        assert relative_error(actual[name], expected[name]) < 1e-4, name


def test_the_portable_layout_has_one_rank_and_no_patterns_and_peft_serves_it_exactly(
    tiny_base, task_adapter, align_adapter, tmp_path
):
    """task (r 8, every layer) + align (r 4 with a rank-2 module, rsLoRA, layers 0-1): the default output pads every
    module to rank 12 with lora_alpha 12 and no patterns, and PEFT applies exactly the weighted sum."""
    out = tmp_path / "m"
    result = merge_adapters(sources((task_adapter, 1.0), (align_adapter, 0.5)), out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["r"] == config["lora_alpha"] == 12 and config["use_rslora"] is False
    assert config["rank_pattern"] == {} and config["alpha_pattern"] == {}
    tensors = adapter_tensors(out)
    assert {t.shape[0] for k, t in tensors.items() if "lora_A" in k} == {12}
    assert {t.shape[1] for k, t in tensors.items() if "lora_B" in k} == {12}
    # layers 2-3 have only the task's rank 8: the padding is zeros, so their update is unchanged
    a = tensors["base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight"]
    assert a[8:].abs().sum() == 0
    layout = result.report["layout"]
    assert layout["name"] == "portable" and layout["stored_rank"] == 12 and "llama.cpp" in layout["served_exactly_by"]
    card = (out / "README.md").read_text()
    assert "Layout portable (every module stored at rank 12): served exactly by PEFT, vLLM, llama.cpp, TGI, LoRAX." in card
    expected = weighted_sum(
        [peft_delta_weights(tiny_base, task_adapter), peft_delta_weights(tiny_base, align_adapter)], [1.0, 0.5]
    )
    actual = peft_delta_weights(tiny_base, out)
    for name in expected:
        assert relative_error(actual[name], expected[name]) < 1e-5, name
