"""A cross-lingual task built from the iso-codes package on every machine: a country, language or currency
name in language X -> a JSON object with its kind and ISO code, scored by exact match.

Why this task (numbers in BENCHMARKS.md, "Choosing the demo task"): its items are parallel across languages
by construction (one ISO entity, one translated name per language, as MASSIVE's utterances are), the answer
is short (about 12 tokens, so evaluating 6 languages costs seconds, not minutes, on a CPU) and unambiguous
(exact match needs no learned metric), and its domain (proper names) differs from the gettext UI sentences
that the alignment adapter is trained on. Solving it in language X needs understanding X: 'Allemagne' is a
country and 'allemand' a language; ドイツ is Germany, DE.

Sources: /usr/share/iso-codes/json (the entities and English names) and the iso_3166-1, iso_639-2 and
iso_4217 gettext catalogs (English name -> translated name). Licence: LGPL; extract at run time.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from loramerge.atomic import atomic_directory, output_dir_problem, write_jsonl_files
from loramerge.data.corpora import (
    DEFAULT_ROOT,
    SOURCE_LANG,
    add_role_problems,
    parse_split,
    split_of,
)
from loramerge.data.mo_files import read_mo
from loramerge.errors import LoramergeError, ProblemList
from loramerge.output_lock import output_lock

DEFAULT_JSON_ROOT = Path("/usr/share/iso-codes/json")
DEFAULT_SPLIT = "60:10:30"  # by entity: ~370 train entities, ~60 dev, ~180 test (614 entities in all)


@dataclass(frozen=True)
class Kind:
    name: str
    standard: str  # the JSON file and its top-level key
    code_field: str
    catalog: str  # the gettext domain translating its names


KINDS = (
    Kind("country", "3166-1", "alpha_2", "iso_3166-1"),
    Kind("language", "639-2", "alpha_2", "iso_639-2"),  # only languages with a two-letter code (184): the known ones
    Kind("currency", "4217", "alpha_3", "iso_4217"),
)


@dataclass(frozen=True)
class Entity:
    kind: str
    code: str
    name: str  # English

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.code}"


def prompt_text(name: str) -> str:
    return f"Name: {name}\n"


def answer_text(entity: Entity) -> str:
    return json.dumps(
        {entity.kind: entity.code}
    )  # {"country": "DE"}: 6 tokens with Gemma's tokenizer, half of a {"type", "code"} object


def read_entities(json_root: Path) -> list[Entity]:
    entities = []
    for kind in KINDS:
        path = json_root / f"iso_{kind.standard}.json"
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))[kind.standard]
        except (OSError, ValueError, KeyError) as exc:
            raise LoramergeError(
                f"{path}: cannot read the iso-codes table ({exc}); install the Debian package iso-codes or pass --iso-root"
            ) from exc
        entities += [Entity(kind.name, row[kind.code_field], row["name"]) for row in rows if kind.code_field in row]
    return entities


def translated_names(locale_root: Path, lang: str) -> dict[str, dict[str, str]]:
    """kind -> English name -> name in `lang` (English: the names themselves)."""
    names: dict[str, dict[str, str]] = {}
    for kind in KINDS:
        path = locale_root / lang / "LC_MESSAGES" / f"{kind.catalog}.mo"
        entries = read_mo(path.read_bytes())[0] if path.is_file() else {}
        names[kind.name] = {source.strip(): target.strip() for source, target in entries.items() if target.strip()}
    return names


ALIGN_FILE = "align-train.jsonl"


def name_pairs(entity: Entity, langs: list[str], name_in: Callable[[Entity, str], str | None]) -> list[dict[str, str]]:
    """English name -> name in each language that has one, as alignment pairs (no code, no prompt)."""
    pairs = []
    for lang in langs:
        target = name_in(entity, lang)
        if target and lang != SOURCE_LANG:
            pairs.append({"source": entity.name, "target": target, "source_lang": SOURCE_LANG, "target_lang": lang})
    return pairs


@dataclass
class IsoTask:
    counts: dict[str, dict[str, int]]  # split -> lang -> records
    entities: dict[str, int]  # split -> entities
    kinds: dict[str, dict[str, int]]  # split -> kind -> entities
    files: dict[str, Path]


def check_languages(
    supervised: list[str], transfer: list[str], available: dict[str, dict[str, dict[str, str]]], locale_root: Path
) -> None:
    problems = ProblemList()
    add_role_problems(supervised, transfer, problems)
    for lang, names in available.items():
        if lang != SOURCE_LANG and not any(names.values()):
            problems.add(f"{lang}: no iso-codes catalogs translate into it under {locale_root}; choose another language")
    problems.raise_if_any()


def build_iso_task(
    supervised: list[str],
    transfer: list[str],
    out: Path,
    *,
    split: str = DEFAULT_SPLIT,
    seed: int = 0,
    locale_root: Path = DEFAULT_ROOT,
    json_root: Path = DEFAULT_JSON_ROOT,
    overwrite: bool = False,
    align_langs: list[str] | None = None,
) -> IsoTask:
    """Write <out>/train.jsonl (train entities in the supervised languages only), dev.jsonl and test.jsonl (their
    entities in every language, the same entities in each: parallel). An entity belongs to one split (a seeded
    hash of its kind and code), and dev/test keep only entities named in every language.

    align_langs: also write <out>/align-train.jsonl, in-domain alignment pairs: the English name of each TRAIN
    entity with its name in each of these languages, without labels. No dev or test entity appears in it (the
    paper's in-domain alignment data: translations of the task's training inputs)."""
    with output_lock(out):
        if (problem := output_dir_problem(out, overwrite)) is not None:
            raise LoramergeError(problem)
        fractions = parse_split(split)
        langs = list(dict.fromkeys([*supervised, *transfer]))
        named = dict.fromkeys([*langs, *(align_langs or [])])
        names = {lang: translated_names(locale_root, lang) for lang in named if lang != SOURCE_LANG}
        check_languages(supervised, transfer, names, locale_root)
        entities = read_entities(json_root)

        def name_in(entity: Entity, lang: str) -> str | None:
            return entity.name if lang == SOURCE_LANG else names[lang][entity.kind].get(entity.name)

        records: dict[str, list[dict[str, str]]] = {name: [] for name, fraction in fractions.items() if fraction > 0}
        kinds: dict[str, Counter[str]] = {name: Counter() for name in records}
        align_pairs: list[dict[str, str]] = []
        for entity in sorted(entities, key=lambda e: e.key):
            part = split_of(entity.key, fractions, seed)
            if part == "train":
                align_pairs += name_pairs(entity, align_langs or [], name_in)
            split_langs = supervised if part == "train" else langs
            local = {lang: name_in(entity, lang) for lang in split_langs}
            if part != "train" and not all(local.values()):
                continue  # parallel evaluation: an entity missing in one language leaves every language
            rows = [
                {"id": entity.key, "lang": lang, "prompt": prompt_text(name), "completion": answer_text(entity)}
                for lang, name in local.items()
                if name
            ]
            if rows:
                kinds[part][entity.kind] += 1
                records[part] += rows
        # a train entity can share its name with a dev/test one ("Guarani": currency PYG in train, language gn in
        # test): such pairs would carry a held-out name, so they are dropped
        held_out = {row["prompt"] for part, rows in records.items() if part != "train" for row in rows}
        align_pairs = [p for p in align_pairs if not {prompt_text(p["source"]), prompt_text(p["target"])} & held_out]
        empty = [name for name, rows in records.items() if not rows]
        if empty:
            raise LoramergeError(
                f"no {', '.join(empty)} items for these languages; widen --split or choose better-covered languages"
            )
        with atomic_directory(out) as staging:  # the three files appear together, replacing the old folder whole
            outputs = {staging / f"{name}.jsonl": rows for name, rows in records.items()}
            if align_langs:
                outputs[staging / ALIGN_FILE] = align_pairs
            write_jsonl_files(outputs, overwrite=True)
        files = {name: out / f"{name}.jsonl" for name in records}
        if align_langs:
            files["align pairs"] = out / ALIGN_FILE
        return IsoTask(
            counts={name: dict(Counter(row["lang"] for row in rows)) for name, rows in records.items()},
            entities={name: sum(kinds[name].values()) for name in records},
            kinds={name: dict(kinds[name]) for name in records},
            files=files,
        )
