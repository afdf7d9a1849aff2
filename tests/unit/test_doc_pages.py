"""Every relative link of README.md and docs/ leads to a file, and every #anchor to a
heading of its page; the README links every page of docs/; the Python blocks teach the
public API only (they run in tests/integration/test_docs.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.doc_pages import doc_pages, fenced_blocks, outside_blocks, page_name
from tests.unit.test_public_imports import violations

_LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6} (?P<title>.+?)\s*#*\s*$", re.MULTILINE)


def anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {anchor(match["title"]) for match in _HEADING.finditer(outside_blocks(page))}


def local_links(page: Path) -> list[str]:
    """The page's links that are not to another site."""
    found = [match["target"] for match in _LINK.finditer(outside_blocks(page))]
    return [target for target in found if not re.match(r"^[a-z]+:", target)]


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in local_links(page):
        path_part, _, fragment = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif fragment and linked.suffix == ".md" and fragment not in anchors(linked):
            broken.append(f"{target}: no heading #{fragment} in {page_name(linked)}")
    return broken


@pytest.mark.parametrize("page", doc_pages(), ids=page_name)
def test_every_link_of_the_page_leads_somewhere(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_links_every_docs_page() -> None:
    readme = REPO_ROOT / "README.md"
    linked = {
        (readme.parent / target.partition("#")[0]).resolve() for target in local_links(readme)
    }
    pages = {page.resolve() for page in doc_pages() if page.parent.name == "docs"}
    missing = sorted(
        page_name(page) for page in pages - linked - {REPO_ROOT / "docs" / "README.md"}
    )
    assert missing == []


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [gone](#nowhere) [file](missing.md)\n")
    assert broken_links(page) == [
        f"#nowhere: no heading #nowhere in {page_name(page)}",
        "missing.md: no such file",
    ]


@pytest.mark.parametrize("page", doc_pages(), ids=page_name)
def test_the_python_blocks_of_the_page_import_only_public_names(page: Path) -> None:
    problems = [
        problem
        for block in fenced_blocks(page)
        if block.language == "python"
        for problem in violations("\n" * block.line + block.text, page_name(page))
    ]
    assert problems == []
