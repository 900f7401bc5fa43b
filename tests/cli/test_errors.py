"""The one error policy, case by case through the real command line: a user's mistake gets exit code 2 and one
line that says what is wrong, where, and how to fix it; never "internal error", never a traceback.

Each case here was, before this policy, an internal error, a misleading line or nonsense accepted with exit 0.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.testing.tiny import make_random_adapter, save_tiny_llama


@pytest.fixture(scope="module")
def setup(tiny_model_dir, example_data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("errors")
    model = tiny_model_dir("llama")
    adapter = make_random_adapter(model, root / "adapter", seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    wide = save_tiny_llama(root / "wide-model", hidden_size=128, intermediate_size=160)
    make_random_adapter(wide, root / "wide-adapter", seed=1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    no_weights = root / "no-weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    truncated = root / "truncated"
    truncated.mkdir()
    (truncated / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text())
    weights = (adapter / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    one_pair = root / "one-pair.jsonl"
    one_pair.write_text(example_data["pairs"].read_text().splitlines()[0] + "\n")
    (root / "no-config").mkdir()
    return {"root": root, "model": model, "adapter": adapter, "no_weights": no_weights, "truncated": truncated,
            "wide": root / "wide-adapter", "one_pair": one_pair, **example_data}  # fmt: skip


def refused(args: list[str]) -> str:
    """Run the command; it must exit 2 with one 'error: ...' line as the last stderr line. Returns that line."""
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: "), result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
    return lines[-1]


def refused_in_process_with(env: dict[str, str], args: list[str]) -> str:
    """Like refused(), in a fresh process: the Hub clients read HF_HUB_OFFLINE and HF_ENDPOINT when imported."""
    environment = {**os.environ, **env}
    result = subprocess.run(
        [sys.executable, "-m", "loramerge", *args], env=environment, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "internal error" not in result.stderr, result.stderr
    return lines[-1]


def align(setup: dict[str, Path], model: str, *extra: str) -> list[str]:
    return ["train-align", "--model", model, "--pairs", str(setup["pairs"]), "--out", str(setup["root"] / "out"), *extra]


def test_model_folder_without_config(setup):
    line = refused(align(setup, str(setup["root"] / "no-config")))
    assert "no config.json" in line and "bundled:NAME" in line


def test_model_that_is_an_adapter_names_its_base(setup):
    line = refused(align(setup, str(setup["adapter"])))
    assert "is a PEFT adapter folder, not a model" in line and str(setup["model"]) in line


def test_hub_model_while_offline(setup):
    line = refused_in_process_with({"HF_HUB_OFFLINE": "1"}, align(setup, "someorg/no-such-model"))
    assert "--model someorg/no-such-model: not in the local Hugging Face cache, and HF_HUB_OFFLINE is set" in line


def evaluate(setup: dict[str, Path], *extra: str) -> list[str]:
    return ["eval", "--model", str(setup["model"]), "--data", str(setup["task"]), "--out", str(setup["root"] / "eval"), *extra]


@pytest.mark.parametrize(
    "adapter, expected",
    [
        ("no_weights", "has no adapter_model.safetensors, so the folder is incomplete"),
        ("truncated", "unreadable safetensors file (Error while deserializing header"),
        ("wide", "model.layers.0.self_attn.q_proj takes 128 -> 128 features but --model"),
    ],
)
def test_eval_adapter_problems_are_named(setup, adapter, expected):
    line = refused(evaluate(setup, "--adapter", str(setup[adapter])))
    assert expected in line and str(setup[adapter]) in line


def test_eval_supervised_language_missing_from_the_data(setup):
    line = refused(evaluate(setup, "--supervised", "xx"))
    assert "--supervised xx: no record of" in line and "(it has fr)" in line


def probe(setup: dict[str, Path], *extra: str) -> list[str]:
    return ["probe", "--model", str(setup["model"]), "--out", str(setup["root"] / "probe"), *extra]


def test_probe_adapter_that_does_not_exist(setup):
    missing = setup["root"] / "not-there"
    assert refused(probe(setup, "--pairs", str(setup["pairs"]), "--adapter", str(missing))) == (
        f"error: adapter {missing}: not found; pass a PEFT adapter folder (saved with save_pretrained)"
    )


def test_probe_max_sentences_zero_says_why(setup):
    line = refused(probe(setup, "--pairs", str(setup["pairs"]), "--max-sentences", "0"))
    assert line.startswith("error: --max-sentences 0: each sentence is retrieved among the others")


def test_probe_on_a_single_pair_is_refused_not_scored_perfect(setup):
    line = refused(probe(setup, "--pairs", str(setup["one_pair"])))
    assert line.startswith(f"error: --pairs {setup['one_pair']} gives 1 sentence") and "always right" in line
    assert not (setup["root"] / "probe").exists()


def test_isocodes_out_that_is_a_file(setup):
    afile = setup["root"] / "a-file"
    afile.write_text("mine")
    line = refused(["data", "isocodes", "--supervised", "en", "--transfer", "fr", "--out", str(afile)])
    assert line == f"error: --out {afile}: exists and is a file; choose a folder path" and afile.read_text() == "mine"


def test_isocodes_into_a_non_empty_folder_needs_overwrite(setup):
    folder = setup["root"] / "task-data"
    folder.mkdir()
    (folder / "train.jsonl").write_text("mine\n")
    line = refused(["data", "isocodes", "--supervised", "en", "--transfer", "fr", "--out", str(folder)])
    assert "not empty; pass --overwrite" in line and (folder / "train.jsonl").read_text() == "mine\n"


def test_isocodes_empty_supervised_names_its_own_flag(setup):
    line = refused(["data", "isocodes", "--supervised", "", "--transfer", "fr", "--out", str(setup["root"] / "iso")])
    assert line.startswith("error: --supervised '': give comma-separated locale names, e.g. --supervised")


def test_gettext_out_that_is_a_folder(setup):
    folder = setup["root"] / "pairs-folder"
    folder.mkdir()
    line = refused(["data", "gettext", "--langs", "fr", "--split", "1", "--out", str(folder)])
    assert f"--out {folder}: is a folder; --out names the pairs file" in line and not any(folder.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="float16 training is refused only without a CUDA device")
def test_float16_training_on_a_cpu_says_so(setup):
    """Was 'internal error RuntimeError: expected m1 and m2 to have the same dtype, but got: float != c10::Half'."""
    line = refused(align(setup, str(setup["model"]), "--set", "precision=fp16", "--max-steps", "1"))
    assert line == "error: precision fp16 needs a CUDA device and this machine has none; set precision to bf16 or no"
    assert not (setup["root"] / "out").exists()


def test_set_with_an_unknown_key_blames_the_flag(setup):
    assert refused(align(setup, str(setup["model"]), "--set", "lora.rnk=4")) == (
        "error: --set lora.rnk=4: unknown key; check its spelling against the recipe keys in docs/training.md or docs/merge.md"
    )


def test_merge_search_value_that_is_not_a_number_keeps_the_name_in_its_example(setup, tmp_path):
    a2 = tmp_path / "a2"
    a2.mkdir()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        (a2 / name).write_bytes((setup["adapter"] / name).read_bytes())
    args = [
        "merge",
        str(setup["adapter"]),
        str(a2),
        "--search",
        "a2=x",
        "--dev",
        str(setup["task"]),
        "--out",
        str(tmp_path / "m"),
    ]
    assert refused(args) == "error: --search 'a2=x': 'x' is not a number; expected e.g. --search a2=0,0.5,1"


def test_push_while_offline_speaks_of_uploading(setup):
    line = refused_in_process_with({"HF_HUB_OFFLINE": "1"}, ["push", str(setup["adapter"]), "me/adapter"])
    assert "an upload needs the network; unset HF_HUB_OFFLINE to push" in line and "download" not in line


def test_push_to_an_unreachable_endpoint_does_not_suggest_the_cache(setup):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "LORAMERGE_HUB_RETRIES": "0", "HF_TOKEN": "hf_test"}
    line = refused_in_process_with(env, ["push", str(setup["adapter"]), "me/adapter"])
    assert "cannot reach http://127.0.0.1:9" in line and "HF_HUB_OFFLINE" not in line
    assert json.loads((setup["adapter"] / "adapter_config.json").read_text())["peft_type"] == "LORA"  # untouched
