"""Parallel sentences from the gettext catalogs already on the machine: English msgid -> translated msgstr.

/usr/share/locale/<lang>/LC_MESSAGES/*.mo holds the user-interface strings of every installed program with
its translations. Most strings are labels, format strings or markup; the filter keeps plain sentences.
Licences are GPL/LGPL: extract at run time, do not commit or publish the output.

The .mo reader is our own (40 lines) rather than gettext.GNUTranslations: of the 3,674 catalogs here,
GNUTranslations rejects 5 whose header is Latin-1 (it decodes the header as UTF-8 before it has read the
header's charset) and 1 with a malformed Plural-Forms line; it also builds plural functions we discard.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from difflib import get_close_matches
from fnmatch import fnmatch
from pathlib import Path

from loramerge.atomic import write_jsonl_files
from loramerge.data.mo_files import CatalogError, read_mo
from loramerge.errors import LoramergeError, ProblemList
from loramerge.output_lock import output_lock

DEFAULT_ROOT = Path("/usr/share/locale")
SOURCE_LANG = "en"
SPLIT_NAMES = ("train", "dev", "test")
DEFAULT_SPLIT = "90:5:5"  # dev and test of ~700 sentences each for fr (14k pairs): enough for a retrieval probe
LANG_CODE = re.compile(r"^[A-Za-z]{2,3}(?:_[A-Za-z0-9]+)?(?:@[A-Za-z]+)?$")  # fr, pt_BR, zh_Hant, sr@latin

# Each rule drops a string, source or translation, that is not a plain sentence. Order: the first match is the
# reason counted. The printf rule leaves out the ' ' flag so that "100% of" is not read as "% o".
RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("layout", re.compile(r"[\n\r\t\x00-\x08\x0b\x0c\x0e-\x1f]| {2}")),  # several lines, aligned help columns
    (
        "placeholder",
        re.compile(
            r"%(?:\(\w+\))?[-+#0']*(?:\d+\$)?(?:\*|\d+)?(?:\.(?:\*|\d+))?(?:hh|h|ll|l|L|q|j|z|t|I64|I32|I)?[diouxXeEfFgGaAcspnmS%]"
            r"|%\d|%<PRI|%\{\w+\}"  # Qt %1, inttypes <PRIu64>, Ruby/Rails %{name}
            r"|\{\w*(?:[!:][^{}]*)?\}"  # Python/C# {0}, {name}, {name!r}, {:>5}, {}
            r"|\$\{?\w+\}?"  # shell $VAR, ${VAR}, $1
            r"|@\w+@"  # autoconf @VAR@
        ),
    ),
    ("markup", re.compile(r"<[A-Za-z/!?][^<>]*>|&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);")),
    (
        "url/path/email",
        re.compile(r"\b(?:https?|ftp|file)://|\bwww\.\w|[\w.+-]+@[\w-]+\.[\w.-]+|(?<!\S)(?:~|\.{1,2})?/[\w.]|\b[A-Za-z]:\\"),
    ),
    (
        "shortcut",  # mnemonics (_File, &Open, ファイル(_F)), identifiers (max_size), key combinations (Ctrl+S)
        re.compile(r"_|&\w|\b(?:Ctrl|Control|Alt|Shift|Meta|Super|Cmd)\+", re.IGNORECASE),
    ),
    ("option", re.compile(r"(?<!\S)--?\w")),  # command-line options: --force, -z
)


@dataclass(frozen=True)
class FilterSettings:
    min_words: int = 4  # of the English source; shorter strings are mostly menu labels ("Open File")
    max_chars: int = 200  # of source and translation; longer ones are help paragraphs
    exclude: tuple[str, ...] = ()  # catalog names (fnmatch, no .mo) to skip, e.g. iso_* to keep a task's domain out


def rule_rejection(text: str) -> str | None:
    """The first rule that `text` breaks, or None."""
    for reason, pattern in RULES:
        if pattern.search(text):
            return reason
    return None


def pair_rejection(source: str, target: str, settings: FilterSettings) -> str | None:
    """Why (source, target) is not a clean sentence pair, or None to keep it. Both are already stripped."""
    if not source or not target:
        return "empty"
    reason = rule_rejection(source) or rule_rejection(target)
    if reason:
        return reason
    if len(source.split()) < settings.min_words:
        return "too short"
    if max(len(source), len(target)) > settings.max_chars:
        return "too long"
    if source == target:
        return "untranslated"
    return None


def choose_translation(candidates: Counter[str]) -> str:
    """One translation per source, independent of file order: the most frequent across catalogs, then the
    smallest string (so two runs, or two machines with the same catalogs, agree)."""
    return min(candidates, key=lambda text: (-candidates[text], text))


@dataclass
class LanguagePairs:
    lang: str
    pairs: dict[str, str]  # English source -> translation
    catalogs: int
    unreadable: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def catalog_files(root: Path, lang: str, exclude: tuple[str, ...] = ()) -> list[Path]:
    files = sorted((root / lang / "LC_MESSAGES").glob("*.mo"))
    return [path for path in files if not any(fnmatch(path.stem, pattern) for pattern in exclude)]


def available_languages(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and catalog_files(root, p.name)) if root.is_dir() else []


def extract_language(root: Path, lang: str, settings: FilterSettings) -> LanguagePairs:
    files = catalog_files(root, lang, settings.exclude)
    result = LanguagePairs(lang=lang, pairs={}, catalogs=len(files))
    candidates: dict[str, Counter[str]] = {}
    for path in files:
        try:
            entries, undecodable = read_mo(path.read_bytes())
        except (OSError, CatalogError) as exc:
            result.unreadable.append(f"{path}: {exc}")
            continue
        result.dropped["undecodable"] += undecodable
        for msgid, msgstr in entries.items():
            source, target = msgid.strip(), msgstr.strip()
            reason = pair_rejection(source, target, settings)
            if reason:
                result.dropped[reason] += 1
            else:
                candidates.setdefault(source, Counter())[target] += 1
    result.pairs = {source: choose_translation(options) for source, options in candidates.items()}
    result.dropped["duplicate"] += sum(sum(options.values()) for options in candidates.values()) - len(candidates)
    return result


def check_languages(root: Path, langs_by_flag: dict[str, list[str]]) -> None:
    """Every language a flag names has catalogs under `root` (and is not English, the source side of every pair);
    each problem names its flag."""
    problems = ProblemList()
    if not root.is_dir():
        raise LoramergeError(f"--root {root}: no such folder; gettext catalogs live in {DEFAULT_ROOT}/<lang>/LC_MESSAGES/*.mo")
    available = available_languages(root)
    for flag, langs in langs_by_flag.items():
        if not langs:
            problems.add(f"{flag} is empty; give target languages such as fr,de,ja")
        for lang in langs:
            if lang == SOURCE_LANG:
                problems.add(f"{flag} {lang}: English is the source language of every pair; give target languages")
            elif not LANG_CODE.match(lang) or not catalog_files(root, lang):  # the pattern keeps '../x' out of the path
                what = f"no catalogs in {root / lang / 'LC_MESSAGES'}" if LANG_CODE.match(lang) else "not a locale folder name"
                close = get_close_matches(lang.replace("-", "_"), available, n=3, cutoff=0.6)
                hint = f"did you mean {', '.join(close)}? " if close else ""
                problems.add(
                    f"{flag} {lang!r}: {what}; {hint}{len(available)} languages have catalogs in {root}, e.g. fr, pt_BR, sr@latin"
                )
    problems.raise_if_any()


def add_role_problems(supervised: list[str], transfer: list[str], problems: ProblemList) -> None:
    """A task's languages by role: some supervised (with training data), none both supervised and transfer."""
    if not supervised:
        problems.add("--supervised is empty; give the languages with task training data, e.g. en,fr")
    if set(supervised) & set(transfer):
        both = ", ".join(sorted(set(supervised) & set(transfer)))
        problems.add(f"{both} given as both supervised and transfer; give each once")


def keep_multiway(languages: list[LanguagePairs]) -> None:
    """Keep only the sources translated into every language (in place)."""
    common = set.intersection(*(set(language.pairs) for language in languages)) if languages else set()
    for language in languages:
        language.dropped["not multiway"] += len(language.pairs) - len(common)
        language.pairs = {source: target for source, target in language.pairs.items() if source in common}


def parse_split(text: str) -> dict[str, float]:
    """'90:5:5' -> {'train': 0.9, 'dev': 0.05, 'test': 0.05}; parts name train, dev, test in order."""
    parts = text.split(":")
    problem = f"--split {text!r}: expected 1 to 3 non-negative numbers separated by ':' (train:dev:test), e.g. 90:5:5"
    if not 1 <= len(parts) <= len(SPLIT_NAMES):
        raise LoramergeError(problem)
    try:
        values = [float(part) for part in parts]
    except ValueError:
        raise LoramergeError(problem) from None
    total = sum(values)
    if any(not value >= 0 or value == float("inf") for value in values) or not total > 0:
        raise LoramergeError(problem)
    return {name: value / total for name, value in zip(SPLIT_NAMES, values)}


def split_of(source: str, fractions: dict[str, float], seed: int) -> str:
    """The split of an English sentence: a seeded hash of the sentence alone, so it is the same whatever else is
    extracted (other --langs, --multiway, newer catalogs) and a test sentence never turns up in another run's
    train file. Proportions are those of --split up to sampling noise (+-0.2 % at 14k sentences)."""
    digest = hashlib.sha256(f"{seed}\x00{source}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for name, fraction in fractions.items():
        cumulative += fraction
        if position < cumulative:
            return name
    return next(name for name, fraction in reversed(fractions.items()) if fraction > 0)  # float rounding at 1.0


def split_records(languages: list[LanguagePairs], fractions: dict[str, float], seed: int) -> dict[str, list[dict[str, str]]]:
    """JSONL records per split, sorted by source then --langs order (the translations of a sentence sit together)."""
    by_source: dict[str, list[tuple[str, str]]] = {}
    for language in languages:
        for source, target in language.pairs.items():
            by_source.setdefault(source, []).append((language.lang, target))
    records: dict[str, list[dict[str, str]]] = {name: [] for name, fraction in fractions.items() if fraction > 0}
    for source in sorted(by_source):
        split = split_of(source, fractions, seed)
        for lang, target in by_source[source]:
            records[split].append({"source": source, "target": target, "source_lang": SOURCE_LANG, "target_lang": lang})
    return records


def split_paths(out: Path, splits: Iterable[str]) -> dict[str, Path]:
    """--out data/pairs.jsonl -> data/pairs-train.jsonl, data/pairs-dev.jsonl, ...; a single split writes --out."""
    names = list(splits)
    if len(names) == 1:
        return {names[0]: out}
    stem = out.name.removesuffix(".jsonl")
    return {name: out.with_name(f"{stem}-{name}.jsonl") for name in names}


@dataclass
class Extraction:
    languages: list[LanguagePairs]
    counts: dict[str, dict[str, int]]  # split -> lang -> pairs
    sources: dict[str, int]  # split -> distinct English sentences
    files: dict[str, Path]  # split -> file written


def extract_gettext(
    langs: list[str],
    out: Path,
    *,
    root: Path = DEFAULT_ROOT,
    split: str = DEFAULT_SPLIT,
    settings: FilterSettings = FilterSettings(),
    multiway: bool = False,
    seed: int = 0,
    overwrite: bool = False,
) -> Extraction:
    with output_lock(out):
        if out.is_dir():
            raise LoramergeError(
                f"--out {out}: is a folder; --out names the pairs file, e.g. {out / 'pairs.jsonl'} "
                "(with --split the splits go beside it: pairs-train.jsonl, pairs-dev.jsonl, pairs-test.jsonl)"
            )
        fractions = parse_split(split)
        if settings.min_words < 0 or settings.max_chars < 1:
            raise LoramergeError("--min-words must be >= 0 and --max-chars >= 1")
        langs = list(dict.fromkeys(langs))  # drop repeats, keep order
        check_languages(root, {"--langs": langs})
        languages = [extract_language(root, lang, settings) for lang in langs]
        if multiway:
            keep_multiway(languages)
        empty = [language.lang for language in languages if not language.pairs]
        if empty:
            why = (
                "no source sentence is translated into all of them (--multiway)" if multiway else "every string was filtered out"
            )
            raise LoramergeError(
                f"no pairs for {', '.join(empty)}: {why}; try fewer languages or a lower --min-words (now {settings.min_words})"
            )
        records = split_records(languages, fractions, seed)
        paths = split_paths(out, records)
        write_jsonl_files({paths[name]: rows for name, rows in records.items()}, overwrite)
        counts = {name: dict(Counter(row["target_lang"] for row in rows)) for name, rows in records.items()}
        sources = {name: len({row["source"] for row in rows}) for name, rows in records.items()}
        return Extraction(languages=languages, counts=counts, sources=sources, files=paths)
