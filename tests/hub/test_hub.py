"""Pull and push through the real huggingface_hub client against a local Hub stand-in (tests/hub_server.py).

Nothing leaves 127.0.0.1: HF_ENDPOINT and the constants huggingface_hub read at import point at the
server, and HF_HOME at a temporary folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.errors import LoramergeError, ProblemList
from loramerge.hub.card import card_text
from loramerge.hub.client import download_adapter, resolve_adapter
from tests.hub_server import HubServer, metadata_errors

SECRET = "hf_loramergeTestSecret7Q2xZ9"  # a token that must never appear in output or files
runner = CliRunner()


def hub_env(server: HubServer, home: Path) -> dict[str, str]:
    return {
        "HF_ENDPOINT": server.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_TOKEN": SECRET,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "LORAMERGE_HUB_RETRIES": "2",
        "LORAMERGE_HUB_BACKOFF": "0",
    }


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    from huggingface_hub import constants, hf_api

    server = HubServer(SECRET).start()
    home = tmp_path / "hf-home"
    for key, value in hub_env(server, home).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads these once, at import; a CLI subprocess reads the environment above instead
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_api.api, "endpoint", server.url)  # the module-level client behind peft's file_exists
    yield server
    server.stop()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def seed_adapter(hub: HubServer, repo_id: str, folder: Path, languages: list[str] | None = None) -> str:
    """Put an adapter on the server directly, with a card that carries languages and the alignment tag."""
    files = {name: content for name, content in folder_files(folder).items() if name != "README.md"}
    if languages:
        data = ModelCardData(library_name="peft", language=languages, tags=["lora", "cross-lingual-alignment"])
        files["README.md"] = card_text(data, "an input adapter\n").encode()
    return hub.seed(repo_id, files)


def one_error_line(result) -> str:  # noqa: ANN001 - click's Result
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.fixture
def merged(task_adapter: Path, align_adapter: Path, tmp_path: Path) -> Path:
    """A merge output: a complete adapter whose card passes the Hub's metadata rules."""
    out = tmp_path / "merged"
    result = runner.invoke(app, ["merge", str(task_adapter), str(align_adapter), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_push_then_pull_by_id_and_by_sha_is_byte_identical(hub: HubServer, merged: Path) -> None:
    result = runner.invoke(app, ["push", str(merged), "org/merged", "--commit-message", "first"])
    assert result.exit_code == 0, result.output
    sha = hub.state.repos["org/merged"].branches["main"]
    assert result.stdout.strip() == f"{hub.url}/org/merged/commit/{sha}"
    assert hub.files("org/merged") == {".gitattributes": hub.files("org/merged")[".gitattributes"], **folder_files(merged)}
    for ref in ("org/merged", f"org/merged@{sha}"):
        snapshot = download_adapter(ref)
        assert snapshot.commit == sha and snapshot.label == f"org/merged@{sha}"
        # only what a merge needs is downloaded: config, weights and card
        assert folder_files(snapshot.path) == {
            k: v for k, v in folder_files(merged).items() if k.startswith(("adapter_", "README"))
        }


def test_push_to_a_branch_and_pull_that_revision(hub: HubServer, merged: Path) -> None:
    result = runner.invoke(app, ["push", str(merged), "org/branched", "--revision", "v1", "--private"])
    assert result.exit_code == 0, result.output
    repo = hub.state.repos["org/branched"]
    assert repo.private and "adapter_model.safetensors" not in repo.commit_at("main").files
    assert download_adapter("org/branched@v1").commit == repo.branches["v1"]


def test_merge_adapters_given_by_hub_id_records_repo_and_commit(
    hub: HubServer, task_adapter: Path, align_adapter: Path, tmp_path: Path
) -> None:
    task_sha = seed_adapter(hub, "org/task", task_adapter, ["en", "fr"])
    align_sha = seed_adapter(hub, "org/align", align_adapter, ["de", "zh_CN"])
    out, local = tmp_path / "from-hub", tmp_path / "from-folders"
    result = runner.invoke(app, ["merge", "org/task", f"org/align@{align_sha}", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["merge", str(task_adapter), str(align_adapter), "--out", str(local)]).exit_code == 0
    assert (out / "adapter_model.safetensors").read_bytes() == (local / "adapter_model.safetensors").read_bytes()
    report = json.loads((out / "merge_report.json").read_text())
    assert [(i["source"], i["repo_id"], i["commit"]) for i in report["inputs"]] == [
        ("org/task", "org/task", task_sha),
        (f"org/align@{align_sha}", "org/align", align_sha),
    ]
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())  # pinned to the commits used: a rerun reproduces it
    assert [source["path"] for source in recipe["sources"]] == [f"org/task@{task_sha}", f"org/align@{align_sha}"]
    weights_sha = hashlib.sha256((task_adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert report["inputs"][0]["sha256"]["adapter_model.safetensors"] == weights_sha
    card = ModelCard.load(out / "README.md")
    assert f"`org/task@{task_sha}`" in card.text and f"`org/align@{align_sha}`" in card.text and weights_sha in card.text
    assert card.data.language == ["de", "en", "fr", "zh"]  # from the inputs' cards, as ISO 639 codes
    assert {"merge", "cross-lingual-alignment", "lora", "peft", "loramerge"} <= set(card.data.tags)


def test_a_local_folder_wins_over_a_hub_id(hub: HubServer, task_adapter: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(task_adapter.parent.parent)
    relative = f"{task_adapter.parent.name}/{task_adapter.name}"  # looks like org/name, exists locally
    path, snapshot = resolve_adapter(relative, ProblemList()) or (None, None)
    assert path == Path(relative) and snapshot is None
    assert not hub.state.log


def test_peft_loads_a_pushed_adapter_by_id(hub: HubServer, merged: Path, tiny_base: Path) -> None:
    from peft import PeftModel

    from loramerge.testing.tiny import load_model

    assert runner.invoke(app, ["push", str(merged), "org/peft-load"]).exit_code == 0
    sha = hub.state.repos["org/peft-load"].branches["main"]
    tokens = torch.tensor([[1, 5, 9, 2]])
    with torch.no_grad():
        expected = PeftModel.from_pretrained(load_model(tiny_base), str(merged))(tokens).logits
        by_id = PeftModel.from_pretrained(load_model(tiny_base), "org/peft-load")(tokens).logits
        by_sha = PeftModel.from_pretrained(load_model(tiny_base), "org/peft-load", revision=sha)(tokens).logits
    assert torch.equal(by_id, expected) and torch.equal(by_sha, expected)


def test_the_card_passes_hub_metadata_validation(hub: HubServer, merged: Path) -> None:
    card = ModelCard.load(merged / "README.md")
    card.validate()  # huggingface_hub's own check: posts the card to the (local) Hub's validate-yaml
    assert not metadata_errors((merged / "README.md").read_text())
    data = card.data.to_dict()
    assert data["library_name"] == "peft" and data["pipeline_tag"] == "text-generation"
    assert {"lora", "peft", "loramerge", "merge"} <= set(data["tags"])
    assert "PeftModel.from_pretrained" in card.text and "## Recipe" in card.text


def test_transient_faults_are_retried_without_duplicate_commits(
    hub: HubServer, merged: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LORAMERGE_HUB_RETRIES", "3")
    hub.inject(r"POST .*/preupload/", "429")  # huggingface_hub's own backoff (Retry-After)
    hub.inject(r"POST .*/commit/", "500")  # the commit: retried by loramerge
    hub.inject(r"POST .*/commit/", "drop")  # connection dropped mid-request
    hub.inject(r"POST .*/commit/", "drop-after")  # committed, but the answer is lost
    result = runner.invoke(app, ["push", str(merged), "org/flaky"])
    assert result.exit_code == 0, result.output
    commits = hub.state.repos["org/flaky"].commits
    assert len(commits) == 2, [c.message for c in commits.values()]  # the repo's first commit + ours, once
    assert hub.files("org/flaky")["adapter_model.safetensors"] == (merged / "adapter_model.safetensors").read_bytes()
    assert result.stdout.strip().endswith(hub.state.repos["org/flaky"].branches["main"])
    assert all(fault.remaining == 0 for fault in hub.state.faults)


def test_persistent_faults_fail_cleanly_and_the_output_stays(
    hub: HubServer, task_adapter: Path, align_adapter: Path, tmp_path: Path
) -> None:
    out = tmp_path / "merged"
    hub.inject(r"POST .*/commit/", "500", count=100)
    result = runner.invoke(app, ["merge", str(task_adapter), str(align_adapter), "--out", str(out), "--push-to", "org/down"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]  # after the merge's own summary
    assert line.startswith("error: ") and result.stderr.count("error:") == 1
    assert "HTTP 500" in line and "after 3 attempts" in line and f"loramerge push {out} org/down" in line
    before = folder_files(out)
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "merge_report.json", "recipe.yaml"} <= set(before)
    again = runner.invoke(app, ["push", str(out), "org/down"])
    assert "HTTP 500" in one_error_line(again)
    assert folder_files(out) == before and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    hub.clear_faults()
    assert runner.invoke(app, ["push", str(out), "org/down"]).exit_code == 0  # simply run it again
    assert hub.files("org/down")["adapter_model.safetensors"] == before["adapter_model.safetensors"]


def test_offline_mode_uses_the_cache_and_says_when_it_cannot(
    hub: HubServer, task_adapter: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    sha = seed_adapter(hub, "org/cached", task_adapter)
    assert download_adapter("org/cached").commit == sha
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    requests = len(hub.state.log)
    assert download_adapter("org/cached").commit == sha
    with pytest.raises(LoramergeError, match="HF_HUB_OFFLINE is set"):
        download_adapter("org/never-downloaded")
    assert len(hub.state.log) == requests  # offline: not one request


@pytest.mark.parametrize(
    ("source", "message"),
    [("org/missing", "no such repository"), ("org/present@nope", "no such revision")],
)
def test_unknown_repos_and_revisions_are_one_line_errors(
    hub: HubServer, task_adapter: Path, tmp_path: Path, source: str, message: str
) -> None:
    seed_adapter(hub, "org/present", task_adapter)
    result = runner.invoke(app, ["merge", str(task_adapter), source, "--out", str(tmp_path / "o")])
    assert message in one_error_line(result) and source in result.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("repo_id", ["no-namespace", "a/b/c", "org/double--dash", "org/bad name"])
def test_invalid_repo_ids_are_refused_before_any_work(hub: HubServer, merged: Path, tmp_path: Path, repo_id: str) -> None:
    assert "not a valid Hub repo id" in one_error_line(runner.invoke(app, ["push", str(merged), repo_id]))
    out = tmp_path / "never"
    result = runner.invoke(app, ["merge", str(merged), "--out", str(out), "--push-to", repo_id])
    assert "--push-to" in one_error_line(result) and not out.exists()
    assert not hub.state.log


def test_folders_that_are_not_complete_adapters_are_refused(hub: HubServer, merged: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "adapter_config.json").write_bytes((merged / "adapter_config.json").read_bytes())
    garbled = tmp_path / "garbled"
    garbled.mkdir()
    (garbled / "adapter_config.json").write_bytes((merged / "adapter_config.json").read_bytes())
    (garbled / "adapter_model.safetensors").write_bytes(b"not safetensors")
    for folder in (empty, no_weights, garbled, tmp_path / "missing"):
        assert "refusing to push" in one_error_line(runner.invoke(app, ["push", str(folder), "org/x"]))
    assert not hub.state.log


def test_train_from_a_hub_model_records_its_commit_and_pushes(
    hub: HubServer, tiny_model_dir, example_data: dict[str, Path], tmp_path: Path
) -> None:
    model_sha = hub.seed("org/tiny-llama", folder_files(tiny_model_dir("llama")))
    out = tmp_path / "align"
    args = ["train-align", "--model", "org/tiny-llama@main", "--pairs", str(example_data["pairs"])]
    args += ["--recipe", "recipes/tiny/tiny-align.yaml", "--max-steps", "2", "--out", str(out), "--push-to", "org/align"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["base_model"] == {"name": "org/tiny-llama", "commit": model_sha}
    card = ModelCard(hub.files("org/align")["README.md"].decode())
    assert f"at commit `{model_sha}`" in card.text and card.data.base_model == "org/tiny-llama"
    assert "cross-lingual-alignment" in card.data.tags and card.data.language == ["en", "fr"]
    assert hub.files("org/align")["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()


def test_the_token_never_appears_in_output_or_files(
    hub: HubServer, task_adapter: Path, align_adapter: Path, tmp_path: Path
) -> None:
    """Real processes (logging and warnings as users see them), through a retried and a failed push."""
    seed_adapter(hub, "org/task", task_adapter)
    seed_adapter(hub, "org/align", align_adapter)
    home = tmp_path / "hf-home"  # the hub fixture's
    env = {**os.environ, **hub_env(hub, home)}
    out = tmp_path / "merged"
    hub.inject(r"POST .*/commit/", "500")
    merge = [sys.executable, "-m", "loramerge", "merge", "org/task", "org/align", "--out", str(out), "--push-to", "org/m"]
    first = subprocess.run(merge, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    hub.inject(r"POST .*/commit/", "500", count=100)
    failed = subprocess.run(
        [sys.executable, "-m", "loramerge", "push", str(out), "org/m2"], env=env, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1, failed.stderr
    assert any(f"Bearer {SECRET}" == header for header in hub.state.auth_seen)  # the token was used ...
    for run in (first, failed):
        assert SECRET not in run.stdout + run.stderr  # ... and never shown
    for root in (out, home):
        for path in root.rglob("*"):
            assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_training_card_languages_commit_and_evaluation_table() -> None:
    from loramerge.hub.card import TrainingSummary, render_training_card

    summary = TrainingSummary(
        kind="joint task + alignment",
        data_rows=[("task", "fr", 3), ("pairs", "en-zh_CN", 5)],
        hyperparameters={"seed": "0"},
        final_metrics={"task_loss": 1.5},
        base_commit="a" * 40,
        evaluation={"fr": {"chrF": 51.25}, "zh_CN": {"chrF": 40.5, "exact": 0.25}},
    )
    text = render_training_card(summary, "seed: 0\n", "org/base", ["en", "fr", "zh_CN", "pt-BR"])
    card = ModelCard(text)
    assert card.data.language == ["en", "fr", "pt", "zh"] and not metadata_errors(text)
    assert {"cross-lingual-alignment", "lora", "peft", "loramerge"} <= set(card.data.tags) and card.data.base_model == "org/base"
    assert f"at commit `{'a' * 40}`" in text
    assert "## Evaluation" in text and "| zh_CN | 40.5000 | 0.2500 |" in text and "| fr | 51.2500 |  |" in text


def test_eval_and_probe_take_adapters_by_hub_id(
    hub: HubServer, tiny_model_dir, example_data: dict[str, Path], tmp_path: Path
) -> None:
    """The README: adapters are accepted by Hub id wherever an adapter is accepted (eval and probe said 'not found')."""
    from loramerge.testing.tiny import make_random_adapter

    tiny_base = tiny_model_dir("llama")  # with a tokenizer: eval and probe run the model
    adapter = make_random_adapter(tiny_base, tmp_path / "adapter", seed=3, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    sha = seed_adapter(hub, "org/task", adapter)
    evaluated = runner.invoke(
        app,
        ["eval", "--model", str(tiny_base), "--data", str(example_data["dev_task"]), "--adapter", f"task=org/task@{sha}"]
        + ["--max-new-tokens", "2", "--out", str(tmp_path / "eval")],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "task" in json.loads((tmp_path / "eval" / "results.json").read_text())["variants"]
    probed = runner.invoke(
        app,
        ["probe", "--model", str(tiny_base), "--pairs", str(example_data["dev_pairs"]), "--adapter", "org/task"]
        + ["--out", str(tmp_path / "probe")],
    )
    assert probed.exit_code == 0, probed.output
    missing = runner.invoke(
        app,
        ["probe", "--model", str(tiny_base), "--pairs", str(example_data["dev_pairs"])]
        + ["--adapter", "org/absent", "--out", str(tmp_path / "absent")],
    )
    assert "org/absent" in one_error_line(missing) and not (tmp_path / "absent").exists()
