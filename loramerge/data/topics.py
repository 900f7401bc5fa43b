"""A cross-lingual task built for skill transfer: which kind of program a user-interface sentence comes from.

Why this task (issue 21; numbers in BENCHMARKS.md, "Transfer study"): the iso-codes task is bound by knowledge
(to answer, the model must know what a name in language X refers to), which no alignment of sentences can
supply. Here everything needed is in the input: "Could not connect to the database server" is about databases
in every language. The label is one English word whatever the input's language, and the dev/test items of
every language are translations of the same English sentences, so supervised and transfer scores compare the
same items in other words.

Labels come from groups of gettext catalogs (`TOPICS`): a sentence is labelled with the group of the catalogs
it appears in, and left out when it appears in catalogs of two groups (41 sentences here). Dev and test hold
only sentences translated into every language of the task, the same number per label (chance = 1/labels),
chosen by a seeded hash; train holds the supervised languages only, `train_per_label` per label (a split
without some label, or with fewer train sentences of one, is refused).

Licences are GPL/LGPL: extract at run time, do not commit or publish the output.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from loramerge.atomic import atomic_directory, output_dir_problem, write_jsonl_files
from loramerge.data.corpora import (
    DEFAULT_ROOT,
    SOURCE_LANG,
    FilterSettings,
    add_role_problems,
    catalog_files,
    check_languages,
    choose_translation,
    pair_rejection,
    parse_split,
    rule_rejection,
    split_of,
)
from loramerge.data.mo_files import read_mo
from loramerge.errors import LoramergeError, ProblemList
from loramerge.output_lock import output_lock

# label -> catalog names (fnmatch, no .mo). Chosen from the catalogs every Debian image here ships; groups whose
# sentences are translated into few languages (compilers: 154 in fr/ja/ko/ru/zh_CN; networking: 91) are left
# out, so that a balanced test split still has ~150 items per label.
TOPICS: dict[str, tuple[str, ...]] = {
    "packages": ("apt", "libapt-pkg*", "dpkg", "PackageKit", "appstream", "software-properties", "python-apt"),
    "database": ("postgres-*", "psql-*", "pg_*", "initdb-*", "libpq5-*", "plpgsql-*", "pgscripts-*", "ecpg*"),
    "files": ("coreutils", "grep", "sed", "diffutils", "findutils", "tar"),
    "security": ("Linux-PAM", "shadow", "gnupg2", "adduser", "libgcrypt*"),
    "desktop": (
        "gtk20*",
        "glib20",
        "gdk-pixbuf",
        "at-spi2-core",
        "xkeyboard-config",
        "shared-mime-info",
        "gsettings-desktop-schemas",
        "xdg-user-dirs",
    ),
    "system": ("systemd", "libc", "bash", "psmisc", "man-db*"),
}
DEFAULT_SPLIT = "50:15:35"  # by English sentence; files (444 sentences in 6 languages) limits a balanced test to ~155/label
DEFAULT_TRAIN_PER_LABEL = 160  # 960 English records: 300 steps of 16 are ~5 epochs, the paper's baseline
ALIGN_FILE = "align-train.jsonl"


PROMPT_PREFIX = "Text: "


def prompt_text(sentence: str) -> str:
    return f"{PROMPT_PREFIX}{sentence}\n"


def sentence_of(prompt: str) -> str:
    """The sentence a prompt_text prompt was made from."""
    return prompt.removeprefix(PROMPT_PREFIX).removesuffix("\n")


def topic_of(catalog: str) -> str | None:
    return next((label for label, patterns in TOPICS.items() if any(fnmatch(catalog, p) for p in patterns)), None)


def item_id(label: str, source: str) -> str:
    return f"{label}:{hashlib.sha256(source.encode()).hexdigest()[:12]}"


def order_key(source: str, seed: int) -> bytes:
    """A seeded order of sentences, independent of the split's hash (which uses the same seed)."""
    return hashlib.sha256(f"order\x00{seed}\x00{source}".encode()).digest()


@dataclass
class TopicSentences:
    labels: dict[str, str]  # English sentence -> its one label
    translations: dict[str, dict[str, str]]  # lang -> English sentence -> translation
    ambiguous: int  # sentences found in catalogs of two labels, left out


def read_topic_sentences(root: Path, langs: list[str], settings: FilterSettings | None = None) -> TopicSentences:
    """Every clean English sentence of the topic catalogs of `langs`, with its label and its translations."""
    settings = settings or FilterSettings()
    found: dict[str, set[str]] = {}
    candidates: dict[str, dict[str, Counter[str]]] = {lang: {} for lang in langs if lang != SOURCE_LANG}
    for lang in candidates:
        for path in catalog_files(root, lang):
            label = topic_of(path.stem)
            if label is None:
                continue
            entries, _ = read_mo(path.read_bytes())
            for msgid, msgstr in entries.items():
                source, target = msgid.strip(), msgstr.strip()
                if rule_rejection(source) or len(source.split()) < settings.min_words or len(source) > settings.max_chars:
                    continue
                found.setdefault(source, set()).add(label)
                if pair_rejection(source, target, settings) is None:
                    candidates[lang].setdefault(source, Counter())[target] += 1
    labels = {source: next(iter(groups)) for source, groups in found.items() if len(groups) == 1}
    translations = {
        lang: {source: choose_translation(options) for source, options in by_source.items() if source in labels}
        for lang, by_source in candidates.items()
    }
    return TopicSentences(labels=labels, translations=translations, ambiguous=len(found) - len(labels))


@dataclass
class TopicTask:
    counts: dict[str, dict[str, int]]  # split -> lang -> records
    per_label: dict[str, dict[str, int]]  # split -> label -> sentences
    ambiguous: int
    files: dict[str, Path]


def text_in(sentences: TopicSentences, source: str, lang: str) -> str | None:
    return source if lang == SOURCE_LANG else sentences.translations[lang].get(source)


def balanced(sources: list[str], labels: dict[str, str], cap: int | None, seed: int) -> list[str]:
    """The first `cap` sentences of each label in a seeded order; with cap None, as many per label as the
    smallest label has (so every label is equally frequent)."""
    by_label: dict[str, list[str]] = {label: [] for label in TOPICS}
    for source in sorted(sources, key=lambda s: order_key(s, seed)):
        by_label[labels[source]].append(source)
    size = cap if cap is not None else min(len(rows) for rows in by_label.values())
    return sorted(source for rows in by_label.values() for source in rows[:size])


def records_of(sources: list[str], langs: list[str], sentences: TopicSentences) -> list[dict[str, str]]:
    rows = []
    for source in sources:
        label = sentences.labels[source]
        for lang in langs:
            text = text_in(sentences, source, lang)
            if text:
                rows.append({"id": item_id(label, source), "lang": lang, "prompt": prompt_text(text), "completion": label})
    return rows


def alignment_pairs(sources: list[str], langs: list[str], sentences: TopicSentences, held_out: set[str]) -> list[dict[str, str]]:
    """English train sentences with their translations: the paper's in-domain alignment data (no labels). A pair
    whose English or translated text is also a dev/test text (a translation shared by two sentences) is left out."""
    pairs = []
    for source in sources:
        for lang in langs:
            target = text_in(sentences, source, lang)
            if target and lang != SOURCE_LANG and not {source, target} & held_out:
                pairs.append({"source": source, "target": target, "source_lang": SOURCE_LANG, "target_lang": lang})
    return pairs


def check_label_counts(
    present: dict[str, list[str]], labels: dict[str, str], split_langs: dict[str, list[str]], split: str, train_per_label: int
) -> None:
    """Every split written holds every label, and train `train_per_label` of each (balanced, like dev and test): a
    label without sentences gave a split without that label, and too few a train split of unequal labels, both with
    exit 0. `present`: each split's sentences translated into all its languages."""
    found = set(labels.values())
    if absent := [label for label in TOPICS if label not in found]:
        catalogs = sorted({lang for langs in split_langs.values() for lang in langs if lang != SOURCE_LANG})
        raise LoramergeError(
            f"the catalogs of {', '.join(catalogs)} hold no sentence of label {', '.join(absent)} (the English "
            "sentences are their msgids); choose better-covered languages, e.g. fr,de,ja,ru,zh_CN"
        )
    problems = ProblemList()
    for name, sources in present.items():
        counts = Counter(labels[source] for source in sources)
        empty = [label for label in TOPICS if not counts[label]]
        if empty:
            problems.add(
                f"the {name} split (--split {split}) has no sentence of label {', '.join(empty)} translated into "
                f"every one of {', '.join(split_langs[name])}; choose better-covered languages or give {name} a larger "
                "share of --split"
            )
        elif name == "train" and (fewest := min(counts[label] for label in TOPICS)) < train_per_label:
            short = ", ".join(f"{label} {counts[label]}" for label in TOPICS if counts[label] < train_per_label)
            problems.add(
                f"--train-per-label {train_per_label}: too few train sentences in {', '.join(split_langs[name])} with "
                f"--split {split} ({short}); give at most {fewest}, or a larger train share of --split"
            )
    problems.raise_if_any()


def build_topic_task(
    supervised: list[str],
    transfer: list[str],
    out: Path,
    *,
    split: str = DEFAULT_SPLIT,
    seed: int = 0,
    train_per_label: int = DEFAULT_TRAIN_PER_LABEL,
    locale_root: Path = DEFAULT_ROOT,
    overwrite: bool = False,
    align_langs: list[str] | None = None,
) -> TopicTask:
    """Write <out>/train.jsonl (supervised languages), dev.jsonl and test.jsonl (every language, parallel and
    balanced by label) and, with align_langs, <out>/align-train.jsonl: the train sentences' translations."""
    with output_lock(out):
        if (problem := output_dir_problem(out, overwrite)) is not None:
            raise LoramergeError(problem)
        problems = ProblemList()
        add_role_problems(supervised, transfer, problems)
        problems.raise_if_any()
        if train_per_label < 1:
            raise LoramergeError(f"--train-per-label {train_per_label}: give at least 1 (default {DEFAULT_TRAIN_PER_LABEL})")
        fractions = parse_split(split)
        langs = list(dict.fromkeys([*supervised, *transfer]))
        read_langs = list(dict.fromkeys([*langs, *(align_langs or [])]))
        if not [lang for lang in read_langs if lang != SOURCE_LANG]:  # English sentences are other catalogs' msgids
            raise LoramergeError("--transfer is empty; give the languages seen only in dev/test, e.g. fr,ja,ru,zh_CN")
        roles = {"--supervised": supervised, "--transfer": transfer}
        targets = {flag: [lang for lang in role if lang != SOURCE_LANG] for flag, role in roles.items()}
        targets = {flag: role for flag, role in targets.items() if role}  # English is a task language, needs no catalog
        if align_langs:  # but not a language to pair English with
            targets["--align-pairs"] = align_langs
        check_languages(locale_root, targets)
        sentences = read_topic_sentences(locale_root, read_langs)
        by_split: dict[str, list[str]] = {name: [] for name, fraction in fractions.items() if fraction > 0}
        for source in sentences.labels:
            by_split[split_of(source, fractions, seed)].append(source)
        split_langs = {name: supervised if name == "train" else langs for name in by_split}  # dev/test: every language
        present = {
            name: [s for s in sources if all(text_in(sentences, s, lang) for lang in split_langs[name])]
            for name, sources in by_split.items()
        }
        check_label_counts(present, sentences.labels, split_langs, split, train_per_label)
        chosen = {
            name: balanced(sources, sentences.labels, train_per_label if name == "train" else None, seed)
            for name, sources in present.items()
        }
        records = {name: records_of(sources, split_langs[name], sentences) for name, sources in chosen.items()}
        outputs = {f"{name}.jsonl": rows for name, rows in records.items()}
        if align_langs:
            held_out = {
                text_in(sentences, s, lang) or s for name in chosen if name != "train" for s in chosen[name] for lang in langs
            }
            outputs[ALIGN_FILE] = alignment_pairs(by_split.get("train", []), align_langs, sentences, held_out)
        with atomic_directory(out) as staging:  # the files appear together, replacing the old folder whole
            write_jsonl_files({staging / name: rows for name, rows in outputs.items()}, overwrite=True)
        files = {name.removesuffix(".jsonl") if name != ALIGN_FILE else "align pairs": out / name for name in outputs}
        return TopicTask(
            counts={name: dict(Counter(row["lang"] for row in rows)) for name, rows in records.items()},
            per_label={name: dict(Counter(sentences.labels[s] for s in sources)) for name, sources in chosen.items()},
            ambiguous=sentences.ambiguous,
            files=files,
        )
