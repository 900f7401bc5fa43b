"""The documents hold for the repository they describe: citations of the design document and links in README.md
and docs/ resolve, docs/layout.md lists exactly the source files on disk, and CI runs the README's test command."""

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


LAYOUT = ROOT / "docs" / "layout.md"
LAYOUT_ROW = re.compile(r"^\| `((?:loramerge|bench)/[^`]+\.py)` \|", flags=re.MULTILINE)
FENCE = re.compile(r"^```.*?^```[^\n]*$", flags=re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", flags=re.MULTILINE)


def source_files_on_disk() -> set[str]:
    package = {path for path in ROOT.glob("loramerge/**/*.py") if "__pycache__" not in path.parts}
    return {str(path.relative_to(ROOT)) for path in [*package, *ROOT.glob("bench/*.py")]}


def test_layout_lists_every_source_file_and_no_other() -> None:
    listed = LAYOUT_ROW.findall(LAYOUT.read_text(encoding="utf-8"))
    assert listed, "docs/layout.md lists files as table rows starting with | `path.py` |; the pattern found none"
    duplicates = sorted({path for path in listed if listed.count(path) > 1})
    on_disk = source_files_on_disk()
    unlisted = sorted(on_disk - set(listed))
    stale = sorted(set(listed) - on_disk)
    assert not (unlisted or stale or duplicates), (
        "update docs/layout.md: "
        f"files on disk it does not list: {unlisted}; files it lists that do not exist: {stale}; "
        f"files listed twice: {duplicates}"
    )


def without_code_fences(text: str) -> str:
    """Markdown without its fenced blocks: a `# comment` in a YAML or bash block is no heading."""
    return FENCE.sub("", text)


def without_code(text: str) -> str:
    """Markdown without fenced blocks and inline code: neither holds links."""
    return CODE_SPAN.sub("", without_code_fences(text))


def github_anchor(heading: str) -> str:
    """GitHub's slug of a heading: lowercase, punctuation except '-' and '_' dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub makes for the file's headings; a repeated slug gets -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for heading in HEADING.findall(without_code_fences(path.read_text(encoding="utf-8"))):
        slug = github_anchor(heading)
        found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return found


def test_github_anchor_follows_githubs_rules() -> None:
    assert github_anchor("`loramerge train-align` and `loramerge train-task`") == "loramerge-train-align-and-loramerge-train-task"
    assert github_anchor("Where a training step's time goes, and what loramerge skips") == (
        "where-a-training-steps-time-goes-and-what-loramerge-skips"
    )
    assert github_anchor("Compared with PEFT's `add_weighted_adapter`") == "compared-with-pefts-add_weighted_adapter"
    assert github_anchor("Training (bench/train.py)") == "training-benchtrainpy"


def test_every_relative_link_in_readme_and_docs_resolves() -> None:
    broken = []
    for document in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in LINK.findall(without_code(document.read_text(encoding="utf-8"))):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.IGNORECASE):
                continue  # https:, mailto:: not a file in the repository
            file_part, _, anchor = target.partition("#")
            linked = (document.parent / file_part).resolve() if file_part else document
            where = f"{document.relative_to(ROOT)}: ({target})"
            if not linked.exists():
                broken.append(f"{where}: no file {file_part}")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{where}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, "broken links:\n" + "\n".join(sorted(set(broken)))


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"Tests \(what CI runs, in `\.ci/run`\):\n\n```bash\n(.+?)\n```", readme)
    assert block, "README.md has lost its 'Tests (what CI runs, in `.ci/run`)' block"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert block.group(1) in ci, ".ci/run must run the README's test command exactly, as one line"


def test_the_training_recipe_reference_shows_every_key_with_its_default() -> None:
    """docs/training.md's "Recipe keys" block is the schema's defaults, so the reference cannot drift from the code."""
    import yaml

    from loramerge.train.recipe import TrainRecipe

    text = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    section = text.split("### Recipe keys", 1)[1]
    block = section.split("```yaml", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(block) == TrainRecipe().model_dump(mode="json")
