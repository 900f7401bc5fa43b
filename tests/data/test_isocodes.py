"""The iso-codes task: built from this machine's iso-codes tables and catalogs; parallel dev/test, supervised-only train."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.data.isocodes import Entity, answer_text, build_iso_task, prompt_text


def read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_answer_is_compact_json() -> None:
    assert answer_text(Entity("country", "DE", "Germany")) == '{"country": "DE"}'
    assert prompt_text("ドイツ") == "Name: ドイツ\n"


def test_splits_are_disjoint_parallel_and_train_is_supervised_only(tmp_path: Path) -> None:
    task = build_iso_task(["en", "fr"], ["ru", "ja"], tmp_path)
    train, dev, test = (read(task.files[name]) for name in ("train", "dev", "test"))
    assert {r["lang"] for r in train} == {"en", "fr"}
    assert {r["lang"] for r in test} == {"en", "fr", "ru", "ja"}
    ids = {name: {r["id"] for r in rows} for name, rows in (("train", train), ("dev", dev), ("test", test))}
    assert not ids["train"] & ids["test"] and not ids["dev"] & ids["test"] and not ids["train"] & ids["dev"]
    for lang in ("en", "fr", "ru", "ja"):  # parallel: every test entity in every language
        assert {r["id"] for r in test if r["lang"] == lang} == ids["test"]
    assert task.entities["test"] > 150 and task.entities["train"] > 300  # 614 entities, split 60:10:30
    germany = [r for r in train + dev + test if r["id"] == "country:DE"]
    by_lang = {r["lang"]: r for r in germany}
    assert by_lang["en"]["prompt"] == "Name: Germany\n" and by_lang["en"]["completion"] == '{"country": "DE"}'
    if "ja" in by_lang:  # Germany sits in dev or test, where every language is present
        assert by_lang["ja"]["prompt"] == "Name: ドイツ\n"
    assert set(task.kinds["test"]) == {"country", "language", "currency"}


def test_same_seed_same_split_and_languages_do_not_move_entities(tmp_path: Path) -> None:
    one = build_iso_task(["en"], ["de"], tmp_path / "a")
    two = build_iso_task(["en", "fr"], ["de", "ja"], tmp_path / "b")
    train_one = {r["id"] for r in read(one.files["train"])}
    train_two = {r["id"] for r in read(two.files["train"])}
    assert train_one == train_two  # the split is a hash of the entity, not of the language list


def test_cli_refuses_overlapping_groups_and_unknown_languages(tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(app, ["data", "isocodes", "--supervised", "en,fr", "--transfer", "fr", "--out", str(tmp_path / "x")])
    assert both.exit_code == 2 and "both supervised and transfer" in both.output
    unknown = runner.invoke(app, ["data", "isocodes", "--supervised", "en", "--transfer", "xx", "--out", str(tmp_path / "y")])
    assert unknown.exit_code == 2 and "xx" in unknown.output
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.mark.parametrize("exclude", ["iso_*"])
def test_gettext_exclude_leaves_the_catalogs_out(tmp_path: Path, exclude: str) -> None:
    from loramerge.data.corpora import catalog_files

    files = catalog_files(Path("/usr/share/locale"), "ja")
    kept = catalog_files(Path("/usr/share/locale"), "ja", (exclude,))
    assert any(path.stem.startswith("iso_") for path in files)
    assert kept and not any(path.stem.startswith("iso_") for path in kept)


def test_written_files_get_the_usual_mode_not_mkstemps_private_one(tmp_path: Path) -> None:
    import os

    umask = os.umask(0o022)
    try:
        task = build_iso_task(["en"], ["de"], tmp_path)
    finally:
        os.umask(umask)
    assert all(path.stat().st_mode & 0o777 == 0o644 for path in task.files.values())


def test_in_domain_alignment_pairs_name_only_train_entities(tmp_path: Path) -> None:
    """--align-pairs: translations of the training inputs, no labels, and no dev or test entity (no leak)."""
    result = CliRunner().invoke(
        app,
        ["data", "isocodes", "--supervised", "en,fr", "--transfer", "ru,ko", "--align-pairs", "ru,ja", "--out", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    pairs = read(tmp_path / "align-train.jsonl")
    train, test = read(tmp_path / "train.jsonl"), read(tmp_path / "test.jsonl")
    assert {p["target_lang"] for p in pairs} == {"ru", "ja"} and {p["source_lang"] for p in pairs} == {"en"}
    english_train = {r["prompt"].removeprefix("Name: ").strip() for r in train if r["lang"] == "en"}
    english_test = {r["prompt"].removeprefix("Name: ").strip() for r in test if r["lang"] == "en"}
    assert {p["source"] for p in pairs} <= english_train
    assert not {p["source"] for p in pairs} & english_test
    assert len(pairs) > 500  # ~370 train entities x 2 languages, a few untranslated
    assert all("{" not in p["target"] and "Name:" not in p["source"] for p in pairs)  # names only, no labels
    assert {r["lang"] for r in test} == {"en", "fr", "ru", "ko"}  # alignment languages do not enter dev/test
