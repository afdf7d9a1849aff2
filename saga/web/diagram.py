"""A stored saga definition drawn as SVG: its positions left to right, joined by arrows.

The input is ``shared.saga_definition.steps`` as stored (see :mod:`saga.shapes`): a plain
step has no ``kind``; ``parallel`` holds its ``branches`` (step documents), drawn stacked
inside a bracket; ``await_event`` is drawn as a hexagon with its event and timeout;
``sub_saga`` as a double box naming the child definition and version. A kind this console
does not know is drawn as a plain box that says so, rather than failing the page.

Rows wrap after :data:`POSITIONS_PER_ROW` positions, with an elbow arrow from the end of
one row to the start of the next, so the drawing is never wider than five positions and
grows downward. When ``counts`` is given, a line under the diagram says how many sagas
of the definition are in each status (the page may leave it out and show its own).

Classes only, no inline styles (the console's Content-Security-Policy): ``position``
plus ``position-step`` / ``position-parallel`` / ``position-await_event`` /
``position-sub_saga`` / ``position-unknown``; ``box``, ``box-inner`` (the child's second
border), ``group`` and ``group-label`` (a parallel bracket), ``kind-label``, ``name``,
``detail``, ``undo``, ``no-undo``; ``arrow`` (lines) and ``arrowhead``; ``counts`` with a
``count status-<status>`` per figure. Every text is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from saga.web.svg import coordinate as _n
from saga.web.svg import css_token as _token
from saga.web.svg import escaped as _text

POSITIONS_PER_ROW = 5
BOX_WIDTH = 184
LINE = 15
BOX_HEIGHT = 8 + 4 * LINE + 6
ARROW_GAP = 44
"""Horizontal room between two positions, where the arrow runs."""
ROW_GAP = 40
MARGIN = 28
GROUP_PAD = 10
GROUP_LABEL = 20
BRANCH_GAP = 10
COUNTS_HEIGHT = 30
TEXT_CHARS = 24
"""Box lines longer than this are cut (the whole text is in the box's tooltip)."""

_STATUS_ORDER = ("running", "waiting", "compensating", "parked", "completed", "compensated")


@dataclass(frozen=True, slots=True)
class _Placed:
    """A position with its number, size and where it goes."""

    number: int
    document: Mapping[str, Any]
    width: float
    height: float
    x: float = 0.0
    y: float = 0.0


def definition_svg(
    steps: Sequence[Mapping[str, Any]], *, counts: Mapping[str, int] | None = None
) -> str:
    """The definition's positions as one ``<svg>`` element; ``counts`` (status → sagas),
    when given, is drawn as one line under the diagram."""
    rows = _rows(steps)
    width = MARGIN * 2 + max((_row_width(row) for row in rows), default=BOX_WIDTH)
    parts: list[str] = []
    top = float(MARGIN)
    previous: tuple[_Placed, float, float] | None = None  # last box, its row's mid and bottom
    for row in rows:
        height = max(p.height for p in row)
        mid = top + height / 2
        x = float(MARGIN)
        for index, placed in enumerate(row):
            placed = _at(placed, x, mid - placed.height / 2)
            if previous is not None and index == 0:
                parts.extend(_wrap_arrow(previous[0], previous[1], previous[2], mid))
            elif previous is not None:
                parts.extend(_arrow(previous[0].x + previous[0].width, x, mid))
            parts.extend(_position(placed))
            previous = (placed, mid, top + height)
            x += placed.width + ARROW_GAP
        top += height + ROW_GAP
    if not rows:
        parts.append(f'<text class="detail" x="{MARGIN}" y="{MARGIN + LINE}">no steps</text>')
        top += LINE + ROW_GAP
    height = top - ROW_GAP + MARGIN
    if counts:
        parts.append(_counts(counts, height))
        height += COUNTS_HEIGHT
    label = f"Saga definition: {len(steps)} positions"
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="definition-diagram" role="img" '
            f'aria-label="{_text(label)}" viewBox="0 0 {_n(width)} {_n(height)}" '
            f'width="{_n(width)}" height="{_n(height)}">',
            f"<title>{_text(label)}</title>",
            *parts,
            "</svg>",
        ]
    )


# --- layout -------------------------------------------------------------------------


def _rows(steps: Sequence[Mapping[str, Any]]) -> list[list[_Placed]]:
    placed = [_measured(number, document) for number, document in enumerate(steps, start=1)]
    return [
        placed[start : start + POSITIONS_PER_ROW]
        for start in range(0, len(placed), POSITIONS_PER_ROW)
    ]


def _measured(number: int, document: Mapping[str, Any]) -> _Placed:
    if document.get("kind") == "parallel":
        branches = len(_branches(document))
        inner = branches * BOX_HEIGHT + max(0, branches - 1) * BRANCH_GAP
        return _Placed(
            number, document, BOX_WIDTH + 2 * GROUP_PAD, GROUP_LABEL + inner + 2 * GROUP_PAD
        )
    return _Placed(number, document, BOX_WIDTH, BOX_HEIGHT)


def _row_width(row: Sequence[_Placed]) -> float:
    return sum(p.width for p in row) + ARROW_GAP * (len(row) - 1)


def _at(placed: _Placed, x: float, y: float) -> _Placed:
    return _Placed(placed.number, placed.document, placed.width, placed.height, x, y)


def _branches(document: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    branches = document.get("branches")
    if not isinstance(branches, list):
        return []
    return [b for b in branches if isinstance(b, Mapping)]


# --- shapes -------------------------------------------------------------------------


def _position(placed: _Placed) -> list[str]:
    kind = placed.document.get("kind")
    if kind is None:
        return _step_box(placed.document, placed.x, placed.y, f"step {placed.number}")
    if kind == "parallel":
        return _group(placed)
    if kind == "await_event":
        return _wait(placed)
    if kind == "sub_saga":
        return _child(placed)
    return _unknown(placed, str(kind))


def _step_box(document: Mapping[str, Any], x: float, y: float, kind_label: str) -> list[str]:
    name = _field(document, "name")
    compensation = document.get("compensation")
    if compensation:
        undo = ("undo", f"undo: {compensation}")
    else:
        reason = document.get("no_compensation")
        undo = ("no-undo", f"no undo ({reason})" if reason else "no undo")
    tooltip = [
        f"step {name}",
        f"journey: {_field(document, 'journey')}",
        f"action: {_field(document, 'action')}",
        undo[1],
        f"isolation: {_field(document, 'isolation')}",
        f"timeout: {_seconds(document.get('timeout'))}",
        f"attempts: {_attempts(document.get('retry'))}",
    ]
    lines = [
        ("kind-label", kind_label),
        ("name", name),
        ("detail", f"{_field(document, 'journey')} · {_field(document, 'action')}"),
        undo,
    ]
    return [
        '<g class="position position-step">',
        f"<title>{_text(chr(10).join(tooltip))}</title>",
        _rect("box", x, y, BOX_WIDTH, BOX_HEIGHT),
        *_lines(lines, x, y),
        "</g>",
    ]


def _group(placed: _Placed) -> list[str]:
    name = _field(placed.document, "name")
    branches = _branches(placed.document)
    parts = [
        '<g class="position position-parallel">',
        f"<title>{_text(f'parallel group {name}: {len(branches)} branches')}</title>",
        _rect("group", placed.x, placed.y, placed.width, placed.height),
        f'<text class="group-label" x="{_n(placed.x + GROUP_PAD)}" '
        f'y="{_n(placed.y + GROUP_PAD + 10)}">'
        f"{_text(_cut(f'parallel {placed.number} · {name}'))}</text>",
    ]
    y = placed.y + GROUP_PAD + GROUP_LABEL
    for index, branch in enumerate(branches):
        parts.extend(_step_box(branch, placed.x + GROUP_PAD, y, f"branch {index}"))
        y += BOX_HEIGHT + BRANCH_GAP
    parts.append("</g>")
    return parts


def _wait(placed: _Placed) -> list[str]:
    document, x, y = placed.document, placed.x, placed.y
    w, h, bevel = placed.width, placed.height, 14.0
    points = [
        (x + bevel, y), (x + w - bevel, y), (x + w, y + h / 2),
        (x + w - bevel, y + h), (x + bevel, y + h), (x, y + h / 2),
    ]  # fmt: skip
    timeout = f"timeout {_seconds(document.get('timeout'))} → {_field(document, 'on_timeout')}"
    tooltip = [f"wait {_field(document, 'name')}", f"event: {_field(document, 'event')}", timeout]
    if document.get("when"):
        tooltip.append(f"only when {document['when']}")
    lines = [
        ("kind-label", f"wait {placed.number}"),
        ("name", _field(document, "name")),
        ("detail", f"event: {_field(document, 'event')}"),
        ("detail", timeout),
    ]
    return [
        '<g class="position position-await_event">',
        f"<title>{_text(chr(10).join(tooltip))}</title>",
        f'<polygon class="box" points="{" ".join(f"{_n(px)},{_n(py)}" for px, py in points)}"/>',
        *_lines(lines, x + bevel / 2, y),
        "</g>",
    ]


def _child(placed: _Placed) -> list[str]:
    document, x, y = placed.document, placed.x, placed.y
    child, version = _child_definition(document.get("definition"))
    lines = [
        ("kind-label", f"child saga {placed.number}"),
        ("name", _field(document, "name")),
        ("detail", child),
        ("detail", f"version {version}"),
    ]
    tooltip = f"child saga {_field(document, 'name')}: runs {child} v{version}"
    return [
        '<g class="position position-sub_saga">',
        f"<title>{_text(tooltip)}</title>",
        _rect("box", x, y, placed.width, placed.height),
        _rect("box-inner", x + 4, y + 4, placed.width - 8, placed.height - 8),
        *_lines(lines, x + 4, y),
        "</g>",
    ]


def _unknown(placed: _Placed, kind: str) -> list[str]:
    lines = [
        ("kind-label", f"{kind} {placed.number}"),
        ("name", _field(placed.document, "name")),
        ("detail", "a kind this console does not draw"),
    ]
    return [
        '<g class="position position-unknown">',
        _rect("box", placed.x, placed.y, placed.width, placed.height),
        *_lines(lines, placed.x, placed.y),
        "</g>",
    ]


def _child_definition(value: Any) -> tuple[str, str]:
    """The child's name and version: stored as ``{"name", "version"}`` (a pair in
    older documents)."""
    if isinstance(value, Mapping):
        return str(value.get("name", "?")), str(value.get("version", "?"))
    if isinstance(value, list | tuple) and len(value) == 2:
        return str(value[0]), str(value[1])
    return "?", "?"


# --- arrows, counts -----------------------------------------------------------------


def _arrow(x1: float, x2: float, y: float) -> list[str]:
    return [_line(x1, y, x2 - 1, y), _arrowhead(x2, y)]


def _wrap_arrow(last: _Placed, mid: float, bottom: float, next_mid: float) -> list[str]:
    """From the end of a row, down between the rows, back to the left margin and into
    the first position of the next row."""
    right = last.x + last.width
    out = right + ARROW_GAP / 2
    between = bottom + ROW_GAP / 2
    back = MARGIN / 2
    return [
        _line(right, mid, out, mid),
        _line(out, mid, out, between),
        _line(out, between, back, between),
        _line(back, between, back, next_mid),
        _line(back, next_mid, MARGIN - 1, next_mid),
        _arrowhead(MARGIN, next_mid),
    ]


def _line(x1: float, y1: float, x2: float, y2: float) -> str:
    return f'<line class="arrow" x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}"/>'


def _arrowhead(x: float, y: float) -> str:
    tip, back = f"{_n(x)},{_n(y)}", _n(x - 7)
    return f'<path class="arrowhead" d="M{tip} L{back},{_n(y - 4)} L{back},{_n(y + 4)} Z"/>'


def _counts(counts: Mapping[str, int], top: float) -> str:
    known = [s for s in _STATUS_ORDER if s in counts]
    ordered = known + sorted(s for s in counts if s not in _STATUS_ORDER)
    figures = " · ".join(
        f'<tspan class="count status-{_token(status)}">'
        f"{_text(status)} {int(counts[status])}</tspan>"
        for status in ordered
    )
    return f'<text class="counts" x="{MARGIN}" y="{_n(top + LINE)}">sagas: {figures}</text>'


# --- small helpers ------------------------------------------------------------------


def _lines(lines: Sequence[tuple[str, str]], x: float, y: float) -> list[str]:
    return [
        f'<text class="{css}" x="{_n(x + 10)}" y="{_n(y + 8 + LINE * row + 11)}">'
        f"{_text(_cut(text))}</text>"
        for row, (css, text) in enumerate(lines)
    ]


def _rect(css: str, x: float, y: float, width: float, height: float) -> str:
    return (
        f'<rect class="{css}" x="{_n(x)}" y="{_n(y)}" width="{_n(width)}" '
        f'height="{_n(height)}" rx="4"/>'
    )


def _field(document: Mapping[str, Any], name: str) -> str:
    value = document.get(name)
    return "?" if value is None else str(value)


def _seconds(value: Any) -> str:
    if not isinstance(value, int | float):
        return "?"
    seconds = float(value)
    for size, unit in ((86_400, "d"), (3_600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def _attempts(retry: Any) -> str:
    if isinstance(retry, Mapping) and "max_attempts" in retry:
        return str(retry["max_attempts"])
    return "?"


def _cut(text: str) -> str:
    return text if len(text) <= TEXT_CHARS else text[: TEXT_CHARS - 1] + "…"
