"""What the console's three drawings (timeline, diagram, charts) write the same way."""

from __future__ import annotations

from html import escape


def css_token(word: str) -> str:
    """``word`` as a class name: letters, digits, ``_`` and ``-`` only."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "_-") else "_" for c in word.lower())


def coordinate(value: float) -> str:
    """A coordinate, rounded so the same input always gives the same text."""
    return f"{value:.1f}"


def escaped(text: str) -> str:
    """Text for an SVG element or attribute: a step named ``<script>`` stays text."""
    return escape(text, quote=True)
