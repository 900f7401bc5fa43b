"""Citations of the design document resolve inside the repository: a clone can follow every one."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITATION = re.compile(r"docs/design\.md section (\d+)")


def test_every_design_citation_names_a_section_that_exists() -> None:
    design = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    sections = set(re.findall(r"^## (\d+)\. ", design, flags=re.MULTILINE))
    cited: dict[str, set[str]] = {}
    for path in [*ROOT.glob("loramerge/**/*.py"), *ROOT.glob("tests/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("*.md")]:
        for number in CITATION.findall(path.read_text(encoding="utf-8")):
            cited.setdefault(number, set()).add(str(path.relative_to(ROOT)))
    assert cited, "the code cites the design document; the pattern must find those citations"
    missing = {number: sorted(paths) for number, paths in cited.items() if number not in sections}
    assert not missing, f"cited sections absent from docs/design.md: {missing}"
    stale = [str(p.relative_to(ROOT)) for p in ROOT.glob("loramerge/**/*.py") if "DESIGN.md" in p.read_text(encoding="utf-8")]
    assert not stale, f"cite docs/design.md, not a DESIGN.md outside the repository: {stale}"
