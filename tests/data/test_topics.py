"""The topic task: built from this machine's gettext catalogs; parallel, label-balanced dev/test; supervised-only
train; in-domain alignment pairs that hold no dev or test text in any language."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loramerge.cli.app import app
from loramerge.data.topics import TOPICS, balanced, build_topic_task, prompt_text, topic_of

LANGS = ["fr", "ja", "ru"]


def read(path: Path) -> list[dict[str, str]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("topics") / "task"
    result = CliRunner().invoke(
        app,
        ["data", "topics", "--supervised", "en", "--transfer", ",".join(LANGS), "--align-pairs", "ru,ja", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "topic task records" in result.output
    return out


def test_catalogs_map_to_one_label_each() -> None:
    assert topic_of("apt") == "packages" and topic_of("postgres-15") == "database" and topic_of("coreutils") == "files"
    assert topic_of("Linux-PAM") == "security" and topic_of("gtk20-properties") == "desktop" and topic_of("systemd") == "system"
    assert topic_of("iso_3166-1") is None and topic_of("bfd") is None  # not a topic catalog
    assert prompt_text("Could not open the file") == "Text: Could not open the file\n"


def test_balanced_takes_the_same_number_of_each_label() -> None:
    labels = {f"s{i}": label for i, label in enumerate(list(TOPICS) * 3)} | {"extra": "files"}
    chosen = balanced(list(labels), labels, None, seed=0)
    assert Counter(labels[s] for s in chosen) == dict.fromkeys(TOPICS, 3)  # 'extra' is cut: files would have 4
    assert Counter(labels[s] for s in balanced(list(labels), labels, 1, seed=0)) == dict.fromkeys(TOPICS, 1)


def test_dev_and_test_are_parallel_balanced_and_disjoint_from_train(task_dir: Path) -> None:
    train, dev, test = (read(task_dir / f"{name}.jsonl") for name in ("train", "dev", "test"))
    assert {r["lang"] for r in train} == {"en"}
    assert {r["lang"] for r in test} == {"en", *LANGS}
    for rows in (dev, test):
        ids = {r["id"] for r in rows}
        for lang in ["en", *LANGS]:  # every item in every language
            assert sorted(r["id"] for r in rows if r["lang"] == lang) == sorted(ids)
        per_label = Counter(item.split(":")[0] for item in ids)
        assert set(per_label) == set(TOPICS) and len(set(per_label.values())) == 1  # chance is 1/6
        assert {r["completion"] for r in rows} == set(TOPICS)  # labels are English words in every language
    train_ids, dev_ids, test_ids = ({r["id"] for r in rows} for rows in (train, dev, test))
    assert not train_ids & test_ids and not dev_ids & test_ids and not train_ids & dev_ids
    assert len(test_ids) >= 6 * 100 and len(train_ids) == 6 * 160


def test_alignment_pairs_hold_no_dev_or_test_text(task_dir: Path) -> None:
    pairs = read(task_dir / "align-train.jsonl")
    held_out = {r["prompt"] for name in ("dev", "test") for r in read(task_dir / f"{name}.jsonl")}
    assert {p["target_lang"] for p in pairs} == {"ru", "ja"} and len(pairs) > 1000
    assert not any(prompt_text(p["source"]) in held_out or prompt_text(p["target"]) in held_out for p in pairs)
    assert not {p["source"] for p in pairs} & set(TOPICS)  # no labels


def test_a_sentence_keeps_its_split_whatever_the_languages(tmp_path: Path) -> None:
    """Other languages change which sentences are found and chosen, never a sentence's split: a test sentence of
    one run is never a training sentence of another."""
    one = build_topic_task(["en"], ["fr"], tmp_path / "a")
    two = build_topic_task(["en"], ["fr", "ja"], tmp_path / "b")
    ids = [{name: {r["id"] for r in read(task.files[name])} for name in ("train", "dev", "test")} for task in (one, two)]
    for a, b in ((0, 1), (1, 0)):
        assert not ids[a]["train"] & (ids[b]["dev"] | ids[b]["test"]) and not ids[a]["dev"] & ids[b]["test"]
    assert len(ids[0]["train"] & ids[1]["train"]) > 100


def test_cli_refuses_bad_roles_and_leaves_nothing(tmp_path: Path) -> None:
    runner = CliRunner()
    both = runner.invoke(app, ["data", "topics", "--supervised", "en,fr", "--transfer", "fr", "--out", str(tmp_path / "x")])
    assert both.exit_code == 2 and "both supervised and transfer" in both.output
    unknown = runner.invoke(app, ["data", "topics", "--supervised", "en", "--transfer", "xx", "--out", str(tmp_path / "y")])
    assert unknown.exit_code == 2 and "xx" in unknown.output
    zero = runner.invoke(
        app, ["data", "topics", "--supervised", "en", "--transfer", "fr", "--train-per-label", "0", "--out", str(tmp_path / "z")]
    )
    assert zero.exit_code == 2 and "--train-per-label 0" in zero.output
    assert not any((tmp_path / name).exists() for name in "xyz")


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--supervised", "xx", "--transfer", "fr"], "error: --supervised 'xx': no catalogs in"),  # was: --langs 'xx'
        (["--supervised", "en", "--transfer", "fr,yy"], "error: --transfer 'yy': no catalogs in"),
        (["--supervised", "en", "--transfer", "fr", "--align-pairs", "en"], "error: --align-pairs en: English is the source"),
        (["--supervised", "en", "--transfer", "fr", "--split", "1:1:1000"], "error: the train split (--split 1:1:1000) has no"),
        (["--supervised", "en", "--transfer", "fr", "--train-per-label", "100000"], "too few train sentences in en"),
    ],
)
def test_cli_refuses_flags_that_leave_a_label_or_a_language_out(tmp_path: Path, flags: list[str], expected: str) -> None:
    """Each was exit 0 (an empty align-train.jsonl; a train split without files and security; a train split of
    unequal labels), or an error naming --langs, a flag this command does not have."""
    out = tmp_path / "task"
    result = CliRunner().invoke(app, ["data", "topics", *flags, "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


def test_catalogs_without_some_label_are_named(tmp_path: Path) -> None:
    from tests.data.test_corpora import write_catalog

    sentences = {f"Could not install the package number {n}": f"Paquet numéro {n} non installé" for n in range(40)}
    write_catalog(tmp_path / "locale", "xx", "apt", sentences)  # packages only
    out = tmp_path / "task"
    result = CliRunner().invoke(
        app, ["data", "topics", "--supervised", "en", "--transfer", "xx", "--root", str(tmp_path / "locale"), "--out", str(out)]
    )
    assert result.exit_code == 2 and not out.exists()
    assert result.stderr.startswith("error: the catalogs of xx hold no sentence of label database, files, security")
