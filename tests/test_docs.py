"""The documentation stays true: the README is a front page of at most about 250 lines, every flag
the CLI accepts has its row (with its default) in docs/flags.md, and every relative link of the
README and docs/ reaches a file (and a heading, where it names one)."""
import re
from pathlib import Path

from conftest import REPO_ROOT
from inference.inference_sim import build_parser

README_LINES = 250


def test_the_readme_is_a_front_page():
    assert len((REPO_ROOT / "README.md").read_text().splitlines()) <= README_LINES


def test_every_flag_has_a_row_with_its_default_in_docs_flags():
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in (REPO_ROOT / "docs" / "flags.md").read_text().splitlines() if line.startswith("| `")]
    missing = []
    for action in build_parser()._actions:
        spellings = set(action.option_strings)
        row = next((cells for cells in rows if len(cells) >= 3
                    and set(re.findall(r"`(-[^`]*)`", cells[0])) == spellings), None)
        if row is None or (action.dest != "help" and not row[1]):
            missing.append(sorted(spellings))
    assert not missing, missing


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors, seen, fenced = set(), {}, False
    for line in path.read_text().splitlines():
        fenced = fenced != line.startswith("```")
        if fenced or not re.match(r"#{1,6} ", line):
            continue
        text = line.lstrip("#").strip().lower().replace("`", "")
        slug = "".join(char for char in text if char.isalnum() or char in " -_").replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def test_every_relative_link_reaches_its_file_and_heading():
    broken = []
    for page in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            destination = page.parent / path if path else page
            if not destination.exists() or (anchor and anchor not in heading_anchors(destination)):
                broken.append(f"{page.name}: {target}")
    assert not broken, broken
