"""The README's main job, in its quick form."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from loramerge.cli import app


def test_quick_demo_merges_and_verifies(tmp_path):
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    results = json.loads((out / "results.json").read_text())
    assert results["cat"]["logit_gap"] < 1e-4 and results["cat"]["max_relative_error"] == 0.0
    assert results["svd"]["rank_max"] == 8 and 0 < results["svd"]["max_relative_error"] < 1
    assert (out / "merged-cat" / "adapter_model.safetensors").is_file()
    assert json.loads((out / "merged-cat" / "adapter_config.json").read_text())["base_model_name_or_path"] == "base"
