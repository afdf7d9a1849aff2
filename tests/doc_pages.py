"""The documentation pages the tests check, and the fenced blocks in them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO_ROOT

# An opening fence: up to three spaces or a list item's indent, then ``` and a language.
_FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,})(?P<language>[\w+-]*)\s*$")


@dataclass(frozen=True)
class Block:
    """A fenced block: its language, the lines of its fences (1-based), and its text."""

    language: str
    line: int
    closing_line: int
    text: str


def doc_pages() -> list[Path]:
    """README.md and every page of docs/."""
    return [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]


def page_name(page: Path) -> str:
    """The page's path from the repository's root (a page elsewhere: its whole path)."""
    if page.is_relative_to(REPO_ROOT):
        return page.relative_to(REPO_ROOT).as_posix()
    return page.as_posix()


def fenced_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order, with its indentation removed."""
    blocks: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        body: list[str] = []
        index += 1
        while index < len(lines) and lines[index].strip() != fence:
            body.append(lines[index].removeprefix(indent))
            index += 1
        if index == len(lines):
            raise ValueError(f"{page_name(page)}: a block is never closed ({fence} missing)")
        # index is the closing fence's 0-based line, so the 1-based line of each fence:
        opening_line, closing_line = index - len(body), index + 1
        blocks.append(
            Block(opening["language"], opening_line, closing_line, "\n".join(body) + "\n")
        )
        index += 1
    return blocks


def outside_blocks(page: Path) -> str:
    """The page's text with every fenced block blanked out (line numbers kept)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    for block in fenced_blocks(page):
        for number in range(block.line, block.closing_line + 1):
            lines[number - 1] = ""
    return "\n".join(lines)
