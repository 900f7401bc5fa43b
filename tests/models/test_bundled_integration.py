"""The method's pieces on a real pretrained model (bundled SmolLM2-135M) and real translations (the
machine's gettext catalogs): the probe over a few hundred sentences, then train-align for a few steps
and a PEFT load of the result. One conversion (~20 s, the session fixture smollm2_cache) serves all tests of the xdist group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.models import bundled

pytestmark = pytest.mark.xdist_group("smollm2")
SPEC = "bundled:smollm2-135m"


@pytest.fixture(scope="module")
def gettext_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gettext") / "pairs.jsonl"
    result = CliRunner().invoke(app, ["data", "gettext", "--langs", "fr,de,ja", "--multiway", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return {split: out.with_name(f"pairs-{split}.jsonl") for split in ("train", "dev", "test")}


def test_probe_on_real_translations(smollm2_cache, gettext_pairs, tmp_path):
    out = tmp_path / "probe"
    result = CliRunner().invoke(
        app,
        [
            "probe",
            "--model",
            SPEC,
            "--pairs",
            str(gettext_pairs["dev"]),
            "--max-sentences",
            "100",
            "--layers",
            "0,8,15,30",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    probe = json.loads((out / "probe.json").read_text())
    layers = probe["variants"]["base"]["layers"]
    assert probe["sentences"] == {"en": 100, "fr": 100, "de": 100, "ja": 100}
    assert len(layers["15"]["directions"]) == 12  # every ordered pair of 4 languages
    chance = 1 / 100
    # a pretrained model retrieves real translations far above chance in its middle layers
    assert layers["15"]["average"]["margin"] > 10 * chance


def test_train_align_on_a_bundled_model_loads_in_peft(smollm2_cache, gettext_pairs, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "align"
    result = CliRunner().invoke(
        app,
        [
            "train-align",
            "--model",
            SPEC,
            "--pairs",
            str(gettext_pairs["train"]),
            "--max-steps",
            "3",
            "--set",
            "batch_size=4",
            "--set",
            "align.max_length=32",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == SPEC
    base = AutoModelForCausalLM.from_pretrained(bundled.load_model_dir(SPEC))
    model = PeftModel.from_pretrained(base, str(out))
    layers = {int(name.split(".layers.")[1].split(".")[0]) for name, _ in model.named_parameters() if "lora_A" in name}
    assert layers == set(range(15))  # k = 15 of 30 blocks
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[1, 2, 3]])).logits).all()
