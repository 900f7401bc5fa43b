"""The retrieval probe end to end on a tiny model, and its sentence grouping."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.data.records import SentencePair
from loramerge.errors import LoramergeError
from loramerge.evaluate.probe import sentence_table


def test_multiway_pairs_give_every_direction():
    pairs = [
        SentencePair("Open the file.", "Ouvrir le fichier.", "en", "fr"),
        SentencePair("Open the file.", "Datei öffnen.", "en", "de"),
        SentencePair("Close it.", "Fermez-le.", "en", "fr"),
    ]
    table = sentence_table(pairs)
    assert sorted(table.directions()) == sorted(
        [("de", "en"), ("de", "fr"), ("en", "de"), ("en", "fr"), ("fr", "de"), ("fr", "en")]
    )
    assert table.shared_groups("de", "fr") == [0] and table.shared_groups("en", "fr") == [0, 1]
    assert len(sentence_table(pairs, limit=1).groups) == 1
    with pytest.raises(LoramergeError, match="ja"):
        sentence_table(pairs, languages=["ja"])


def probe_run(model_dir, pairs: list[tuple[str, str]], tmp_path, name: str) -> dict:
    data = tmp_path / f"{name}.jsonl"
    rows = [{"source": s, "target": t, "source_lang": "en", "target_lang": "xx"} for s, t in pairs]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = CliRunner().invoke(app, ["probe", "--model", str(model_dir), "--pairs", str(data), "--out", str(tmp_path / name)])
    assert result.exit_code == 0, result.output
    return json.loads((tmp_path / name / "probe.json").read_text())["variants"]["base"]["layers"]


def test_probe_scores_known_cases_exactly(tiny_model_dir, tmp_path):
    """Targets identical to their sources pool to identical vectors: every sentence retrieves its own pair (1.0).
    Paired with the NEXT sentence instead, each still retrieves its identical twin, now the wrong one (0.0)."""
    model_dir = tiny_model_dir("llama")
    sentences = [f"Item {i} of the list is {word}." for i, word in enumerate(["ready", "late", "lost", "new"] * 5)]
    identical = probe_run(model_dir, [(s, s) for s in sentences], tmp_path, "identical")
    shifted = probe_run(
        model_dir, [(s, sentences[(i + 1) % len(sentences)]) for i, s in enumerate(sentences)], tmp_path, "shifted"
    )
    for layer in range(1, 5):
        for score in ("cosine", "margin"):
            assert identical[str(layer)]["average"][score] == 1.0, (layer, score)
            assert shifted[str(layer)]["average"][score] == 0.0, (layer, score)


def test_probe_command_scores_base_and_adapter(tiny_model_dir, example_data, make_adapter, tmp_path):
    from loramerge.testing.tiny import make_random_adapter

    model_dir = tiny_model_dir("llama")
    adapter = make_random_adapter(model_dir, tmp_path / "adapter", seed=3, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    out = tmp_path / "probe"
    result = CliRunner().invoke(
        app,
        [
            "probe",
            "--model",
            str(model_dir),
            "--pairs",
            str(example_data["dev_pairs"]),
            "--adapter",
            str(adapter),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    probe = json.loads((out / "probe.json").read_text())
    assert set(probe["variants"]) == {"base", adapter.name}
    assert probe["skip_first_token"] is True  # by default the probe pools as the alignment loss does
    layer = probe["variants"]["base"]["layers"]["2"]
    assert set(layer["directions"]) == {"en->fr", "fr->en"} and layer["directions"]["en->fr"]["sentences"] == 8
    assert all(0.0 <= d[s] <= 1.0 for d in layer["directions"].values() for s in ("cosine", "margin"))
    assert len(probe["variants"]["base"]["layers"]) == 5  # embeddings + 4 blocks
    assert (out / "probe.png").stat().st_size > 1000
    # the adapter changes the representations, the base pass does not use it
    assert probe["variants"]["base"] != probe["variants"][adapter.name]
