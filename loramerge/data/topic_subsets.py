"""Fixed parts of the topic task's dev and test splits: the first items of each label, and the same sentences as
translation pairs for the retrieval probe.

An item's id is its label and a hash of its English sentence, so sorting the ids of one label gives a fixed
pseudo-random order of its items; "items 0-89 of each label" is the same set on every machine and in every run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from loramerge.data.corpora import SOURCE_LANG
from loramerge.data.topics import sentence_of
from loramerge.errors import LoramergeError


def _rows(split_file: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in split_file.read_text(encoding="utf-8").splitlines()]


def _ids_by_label(rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    by_label: dict[str, list[str]] = {}
    for item in sorted({row["id"] for row in rows}):
        by_label.setdefault(item.split(":")[0], []).append(item)
    return by_label


def first_per_label(split_file: Path, per_label: int, out: Path, start: int = 0) -> Path:
    """Items start .. start + per_label - 1 of each label of a split, in every language, written to `out`."""
    rows = _rows(split_file)
    by_label = _ids_by_label(rows)
    short = {label: len(ids) for label, ids in by_label.items() if len(ids) < start + per_label}
    if short:
        raise LoramergeError(
            f"{split_file}: {', '.join(f'{label} has {n}' for label, n in short.items())} items, fewer than the "
            f"{start + per_label} asked for; ask for fewer per label or build the split with more items"
        )
    keep = {item for ids in by_label.values() for item in ids[start : start + per_label]}
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows if r["id"] in keep), encoding="utf-8")
    return out


def probe_pairs(split_file: Path, sentences: int, out: Path) -> Path:
    """The split's first `sentences` English sentences (label by label in turn, so every label is in) with each of
    their translations, as English -> X pairs for `loramerge probe`."""
    rows = _rows(split_file)
    by_label = list(_ids_by_label(rows).values())
    longest = max(map(len, by_label), default=0)
    ranked = [ids[index] for index in range(longest) for ids in by_label if index < len(ids)][:sentences]
    wanted = set(ranked)
    texts: dict[str, dict[str, str]] = {}
    for row in rows:
        if row["id"] in wanted:
            texts.setdefault(row["id"], {})[row["lang"]] = sentence_of(row["prompt"])
    pairs = [
        {"source": by_lang[SOURCE_LANG], "target": text, "source_lang": SOURCE_LANG, "target_lang": lang}
        for item in ranked
        for by_lang in [texts[item]]
        for lang, text in sorted(by_lang.items())
        if lang != SOURCE_LANG
    ]
    out.write_text("".join(json.dumps(pair, ensure_ascii=False) + "\n" for pair in pairs), encoding="utf-8")
    return out
