"""BENCHMARKS.md stays navigable: the sections the code and the docs cite exist, and the current-results table
comes first, with every link in it landing on a section."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "BENCHMARKS.md"

# `BENCHMARKS.md, "Core-space merging"` (a quoted section name, possibly wrapped over a line break)
QUOTED = re.compile(r'BENCHMARKS\.md,\s+"([^"]{1,80})"')
# `(BENCHMARKS.md, pooling)` and `[BENCHMARKS.md, Training](...)`: a short bare name closed by ) or ]
BARE = re.compile(r"BENCHMARKS\.md, ([A-Za-z][\w .:-]{0,40}?)[)\]]")
# `BENCHMARKS.md#training-benchtrainpy`
ANCHOR = re.compile(r"BENCHMARKS\.md#([\w-]+)")
CITING_FILES = ("loramerge/**/*.py", "bench/*.py", "recipes/**/*", "README.md", "docs/*.md")
# Section citations in loramerge/, bench/ and recipes/ when this test was written: 3 quoted ("Choosing the demo
# task", "Transfer study", "Core-space merging") and 5 bare (pooling twice, issue 21, study, issue 14).
CODE_CITATIONS_WHEN_WRITTEN = 8
TABLE_COLUMNS = ["benchmark", "question", "headline number", "commit", "target"]
TARGET_VERDICTS = ("met", "not met", "no target")


def citing_files() -> Iterator[Path]:
    seen: set[Path] = set()
    for pattern in CITING_FILES:
        for path in sorted(ROOT.glob(pattern)):
            if path.is_file() and path not in seen and "__pycache__" not in path.parts:
                seen.add(path)
                yield path


def citations() -> list[tuple[str, str, str]]:
    """(file, kind, name) for every citation of a BENCHMARKS.md section; kind is quoted, bare or anchor."""
    found = []
    for path in citing_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        where = str(path.relative_to(ROOT))
        found += [(where, "quoted", " ".join(name.split())) for name in QUOTED.findall(text)]
        found += [(where, "bare", name.strip()) for name in BARE.findall(text)]
        found += [(where, "anchor", anchor) for anchor in ANCHOR.findall(text)]
    return found


def lines_outside_code(text: str) -> Iterator[str]:
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def headings(text: str) -> list[str]:
    """The ATX headings of a markdown text, code blocks left out (their `# comment` lines are no headings)."""
    found = []
    for line in lines_outside_code(text):
        match = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if match:
            found.append(match.group(1))
    return found


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """Every heading's anchor, with GitHub's -1, -2, ... suffixes on repeated ones."""
    counts: dict[str, int] = {}
    result = set()
    for heading in headings(text):
        base = slug(heading)
        n = counts.get(base, 0)
        counts[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def first_table(text: str) -> tuple[str, list[list[str]]]:
    """(the heading above it, its rows as cells) of the first markdown table outside code blocks."""
    heading, rows = "", []
    for line in lines_outside_code(text):
        stripped = line.strip()
        if stripped.startswith("|"):
            rows.append([cell.strip() for cell in stripped.strip("|").split("|")])
        elif rows:
            break
        else:
            match = re.match(r"#{1,6}\s+(.+?)\s*$", line)
            heading = match.group(1) if match else heading
    return heading, rows


def test_the_citation_patterns_find_todays_citations() -> None:
    in_code = [c for c in citations() if c[0].startswith(("loramerge/", "bench/", "recipes/")) and c[1] != "anchor"]
    assert len(in_code) >= CODE_CITATIONS_WHEN_WRITTEN, f"the patterns found only {in_code}"
    assert {kind for _, kind, _ in in_code} == {"quoted", "bare"}, in_code


def test_every_cited_section_exists() -> None:
    text = BENCHMARKS.read_text(encoding="utf-8")
    names = [heading.casefold() for heading in headings(text)]
    known_anchors = anchors(text)
    missing = []
    for where, kind, name in citations():
        if kind == "anchor":
            if name not in known_anchors:
                missing.append(f"{where}: BENCHMARKS.md#{name} (no heading has this anchor)")
        elif not any(name.casefold() in heading for heading in names):
            missing.append(f'{where}: BENCHMARKS.md, "{name}" (no heading contains it)')
    assert not missing, "cited BENCHMARKS.md sections that do not exist:\n" + "\n".join(missing)


def test_the_first_table_is_the_current_results_table() -> None:
    text = BENCHMARKS.read_text(encoding="utf-8")
    heading, rows = first_table(text)
    assert heading.casefold() == "current results", f"the first table sits under {heading!r}"
    assert rows and rows[0] == TABLE_COLUMNS, f"columns {rows[:1]}, expected {TABLE_COLUMNS}"
    body = rows[2:]
    assert len(body) >= 10, "one row per benchmark question"
    known_anchors = anchors(text)
    for row in body:
        assert len(row) == len(TABLE_COLUMNS), row
        benchmark, question, number, commit, target = row
        link = re.fullmatch(r"\[([^\]]+)\]\(#([\w-]+)\)", benchmark)
        assert link, f"the benchmark cell links to its section: {benchmark!r}"
        assert link.group(2) in known_anchors, f"{benchmark}: no heading has the anchor #{link.group(2)}"
        assert question and number and commit, row
        assert target.startswith(TARGET_VERDICTS), f"target says met, not met or no target: {target!r}"


def test_every_bench_script_has_its_section() -> None:
    text = BENCHMARKS.read_text(encoding="utf-8")
    sections = headings(text)
    helpers = {"common.py", "iso_demo.py"}  # what the scripts share: not benchmarks of their own
    scripts = sorted(p.name for p in (ROOT / "bench").iterdir() if p.suffix in (".py", ".sh") and p.name not in helpers)
    absent = [name for name in scripts if not any(h.endswith(f"(bench/{name})") for h in sections)]
    assert not absent, f"bench scripts without a BENCHMARKS.md section headed '... (bench/NAME)': {absent}"
