"""Shared fixtures: a tiny random Llama saved from a config, and PEFT adapters made by PEFT itself."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from loramerge.testing.tiny import ALL_LINEAR, make_random_adapter, save_tiny_llama

torch.set_num_threads(1)  # tests run in parallel workers on 2 cores; more threads only contend

AdapterFactory = Callable[..., Path]


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def make_adapter(tiny_base: Path, tmp_path_factory: pytest.TempPathFactory) -> AdapterFactory:
    """make_adapter(name, seed=..., **LoraConfig options) -> adapter folder (cached per session)."""
    root = tmp_path_factory.mktemp("adapters")
    made: dict[str, Path] = {}

    def factory(name: str, seed: int = 0, **options: Any) -> Path:
        if name not in made:
            options.setdefault("target_modules", ALL_LINEAR)
            made[name] = make_random_adapter(tiny_base, root / name, seed=seed, **options)
        return made[name]

    return factory


@pytest.fixture(scope="session")
def task_adapter(make_adapter: AdapterFactory) -> Path:
    return make_adapter("task", seed=1, r=8, lora_alpha=16)


@pytest.fixture(scope="session")
def align_adapter(make_adapter: AdapterFactory) -> Path:
    """Like train-align's output: rsLoRA, only the lower half of the layers, per-module rank and alpha."""
    return make_adapter(
        "align",
        seed=2,
        r=4,
        lora_alpha=8,
        use_rslora=True,
        layers_to_transform=[0, 1],
        rank_pattern={"model.layers.1.mlp.down_proj": 2},
        alpha_pattern={"q_proj": 3},
    )


@pytest.fixture(scope="session")
def attention_adapter(make_adapter: AdapterFactory) -> Path:
    """Different target modules (attention only) and an embedding LoRA."""
    return make_adapter("attention", seed=3, r=6, lora_alpha=6, target_modules=["q_proj", "v_proj", "embed_tokens"])


def edit_config(adapter: Path, **changes: Any) -> None:
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """tiny_model_dir('llama' | 'qwen2' | 'gemma3') -> a model folder with a tokenizer, as train-* expect."""
    from transformers import AutoModelForCausalLM

    from loramerge.testing.tiny import save_tiny_tokenizer
    from tests.tiny_configs import CONFIGS

    root = tmp_path_factory.mktemp("trainable-models")
    made: dict[str, Path] = {}

    def factory(architecture: str) -> Path:
        if architecture not in made:
            folder = save_tiny_tokenizer(root / architecture)
            config = CONFIGS[architecture]()
            config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id = 320, 0, 1, 2
            torch.manual_seed(0)
            AutoModelForCausalLM.from_config(config).save_pretrained(folder)
            made[architecture] = folder
        return made[architecture]

    return factory


@pytest.fixture(scope="session")
def example_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """pairs.jsonl (en-fr), task.jsonl (fr -> en 'translation' records) and their dev copies."""
    from loramerge.testing.tiny import EXAMPLE_PAIRS

    root = tmp_path_factory.mktemp("data")
    pairs = [{"source": s, "target": t, "source_lang": "en", "target_lang": "fr"} for s, t in EXAMPLE_PAIRS]
    task = [{"prompt": f"Translate to English: {t}\n", "completion": s, "lang": "fr"} for s, t in EXAMPLE_PAIRS]
    files = {"pairs": pairs * 3, "task": task * 3, "dev_pairs": pairs, "dev_task": task}
    for name, rows in files.items():
        (root / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return {name: root / f"{name}.jsonl" for name in files}


@pytest.fixture(scope="session")
def smollm2_converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh cache with bundled SmolLM2-135M converted once (~20 s). Tests that need it share the xdist group
    "smollm2", so one worker converts once. LORAMERGE_CACHE is set only while converting: a session-wide setting
    would leak into every later test on the worker."""
    from loramerge.models import bundled

    model = bundled.MODELS["smollm2-135m"]
    if bundled.missing_modules(model):
        pytest.fail(f"{model.package} is not installed: run the README's test set-up ({model.install})")
    root = tmp_path_factory.mktemp("bundled-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LORAMERGE_CACHE", str(root))
        bundled.load_model_dir("bundled:smollm2-135m")
    return root


@pytest.fixture
def smollm2_cache(smollm2_converted: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """LORAMERGE_CACHE points at the converted SmolLM2 for this one test, and is restored after it."""
    monkeypatch.setenv("LORAMERGE_CACHE", str(smollm2_converted))
    return smollm2_converted
