"""The PEFT LoRA on-disk format (loramerge/adapters.py) tested directly: scales and ranks as PEFT computes them
(rsLoRA, rank and alpha patterns), key names, carried tensors, and each refusal with the file it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

from loramerge.adapters import CONFIG_FILE, WEIGHTS_FILE, LoraAdapter, load_adapter, lora_scale, pattern_value, split_key
from loramerge.errors import ProblemList
from loramerge.testing.tiny import ALL_LINEAR, load_model, save_tiny_llama

PREFIX = "base_model.model.model.layers.0.self_attn.q_proj"
CONFIG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "base_model_name_or_path": "tiny"}


def write_adapter(folder: Path, tensors: dict[str, torch.Tensor], **config: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps({**CONFIG, **config}), encoding="utf-8")
    save_file(tensors, str(folder / WEIGHTS_FILE))
    return folder


def factors(rank: int = 2, fan_in: int = 8, fan_out: int = 6) -> dict[str, torch.Tensor]:
    return {f"{PREFIX}.lora_A.weight": torch.ones(rank, fan_in), f"{PREFIX}.lora_B.weight": torch.ones(fan_out, rank)}


def loaded(folder: Path) -> tuple[LoraAdapter | None, list[str]]:
    problems = ProblemList()
    adapter = load_adapter(folder, problems)
    return adapter, problems.problems


def test_scales_and_ranks_are_the_ones_peft_applies_with_rslora_and_patterns(tmp_path: Path) -> None:
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=ALL_LINEAR,
        use_rslora=True,
        rank_pattern={"q_proj": 2},
        alpha_pattern={"v_proj": 32},
    )
    model = get_peft_model(load_model(save_tiny_llama(tmp_path / "base")), config)
    model.save_pretrained(tmp_path / "adapter")
    peft_layers = {name.removeprefix("base_model.model."): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    adapter, problems = loaded(tmp_path / "adapter")
    assert problems == [] and adapter is not None
    assert set(adapter.modules) == set(peft_layers)
    for name, module in adapter.modules.items():
        assert module.scale == pytest.approx(peft_layers[name].scaling["default"], rel=1e-12), name
        assert module.rank == peft_layers[name].r["default"], name
    q_proj = next(m for n, m in adapter.modules.items() if n.endswith("q_proj"))
    v_proj = next(m for n, m in adapter.modules.items() if n.endswith("v_proj"))
    assert (q_proj.rank, q_proj.scale) == (2, pytest.approx(8 / 2**0.5))  # rank pattern, rsLoRA: alpha / sqrt(r)
    assert (v_proj.rank, v_proj.scale) == (4, pytest.approx(32 / 2))  # alpha pattern at the default rank 4


def test_pattern_lookup_matches_whole_name_suffixes_as_peft_does() -> None:
    patterns = {"k_proj": 1, "layers.0.self_attn.v_proj": 2}
    assert pattern_value(patterns, "model.layers.3.self_attn.k_proj", 9) == 1
    assert pattern_value(patterns, "model.layers.3.self_attn.xk_proj", 9) == 9  # a suffix of a name part is no match
    assert pattern_value(patterns, "model.layers.0.self_attn.v_proj", 9) == 2
    assert pattern_value(patterns, "model.layers.10.self_attn.v_proj", 9) == 9
    assert lora_scale(16, 4, use_rslora=False) == 4 and lora_scale(16, 4, use_rslora=True) == 8


def test_key_names_linear_embedding_and_others() -> None:
    assert split_key(f"{PREFIX}.lora_A.weight") == ("model.layers.0.self_attn.q_proj", "A", False)
    assert split_key("base_model.model.model.embed_tokens.lora_embedding_B") == ("model.embed_tokens", "B", True)
    assert split_key("base_model.model.lm_head.weight") is None
    assert split_key("model.layers.0.self_attn.q_proj.lora_A.weight") is None  # without PEFT's prefix


def test_a_written_adapter_is_indexed_without_reading_its_tensors(tmp_path: Path) -> None:
    carried = {"base_model.model.lm_head.modules_to_save.default.weight": torch.zeros(5, 8)}
    adapter, problems = loaded(write_adapter(tmp_path / "a", {**factors(), **carried}))
    assert problems == [] and adapter is not None
    (module,) = adapter.modules.values()
    assert (module.rank, module.in_features, module.out_features, module.scale) == (2, 8, 6, 2.0)
    assert (module.a_key, module.b_key) == (f"{PREFIX}.lora_A.weight", f"{PREFIX}.lora_B.weight")
    assert adapter.carried == {"base_model.model.lm_head.modules_to_save.default.weight": (5, 8)}
    assert adapter.dtypes == {"F32"} and adapter.base_model == "tiny"


@pytest.mark.parametrize(
    ("tensors", "config", "expected"),
    [
        (factors(), {"use_dora": True}, "use_dora is true"),
        (factors(), {"lora_bias": True}, "lora_bias is true"),
        (factors(), {"peft_type": "IA3"}, "only 'LORA' adapters"),
        (factors(), {"r": 0}, "r must be a positive number"),
        (factors(), {"lora_alpha": float("nan")}, "lora_alpha must be a positive number, got nan"),
        (factors(), {"lora_alpha": float("inf")}, "lora_alpha must be a positive number, got inf"),
        (factors(rank=3), {}, "has rank 3 but adapter_config.json gives r=2"),
        ({f"{PREFIX}.lora_A.weight": torch.ones(2, 8)}, {}, "has no lora_B tensor"),
        ({f"{PREFIX}.lora_A.weight": torch.ones(2, 8, 1), f"{PREFIX}.lora_B.weight": torch.ones(6, 2)}, {}, "3-D factors"),
        ({**factors(), f"{PREFIX}.lora_magnitude_vector.weight": torch.ones(6)}, {}, "DoRA magnitude vectors"),
        ({**factors(), "model.layers.0.weight": torch.ones(2)}, {}, "unrecognised tensor key"),
        ({"base_model.model.lm_head.weight": torch.ones(2)}, {}, "holds no LoRA factors"),
    ],
)
def test_each_refusal_names_the_file_and_what_is_wrong(
    tmp_path: Path, tensors: dict[str, torch.Tensor], config: dict[str, object], expected: str
) -> None:
    folder = write_adapter(tmp_path / "bad", tensors, **config)
    _, problems = loaded(folder)
    assert problems and expected in problems[0], problems  # a module refused may leave "no LoRA factors" after it
    assert all(str(folder) in problem for problem in problems)


def test_missing_and_pickled_weights_are_refused_with_the_fix(tmp_path: Path) -> None:
    _, problems = loaded(tmp_path / "absent")
    assert problems == [
        f"{tmp_path / 'absent'}: adapter folder not found; pass a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}"
    ]
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / CONFIG_FILE).write_text(json.dumps(CONFIG), encoding="utf-8")
    (folder / "adapter_model.bin").write_bytes(b"not read")
    _, problems = loaded(folder)
    assert len(problems) == 1 and "unsafe to load" in problems[0] and "safe_serialization=True" in problems[0]
