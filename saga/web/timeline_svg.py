"""A saga's timeline drawn as SVG: one lane per step (and per branch of a parallel group),
one bar per attempt, on a time axis that starts when the saga did.

The layout (:func:`timeline_layout`) is worked out apart from the SVG text
(:func:`timeline_svg`), so tests can check positions as numbers. The console's
Content-Security-Policy forbids inline styles and scripts, so the drawing carries classes
only and the stylesheet colours it:

- every attempt: ``bar``, ``bar-<status>`` (``succeeded``, ``failed``, ``timed_out``,
  ``retried``, ``dispatched`` = in flight, ``skipped``, ``aborted``, ``waiting``,
  ``ignored``), ``bar-execute`` or ``bar-compensate``, and ``open`` when it has no outcome
  yet (it then runs to the end of the axis);
- a wait: ``bar-waiting``; the stylesheet hatches it with the pattern this drawing
  defines, ``fill: url(#timeline-hatch)`` (lines of class ``hatch``);
- a row a person wrote (an operator's action, a signal's sender: ``actor`` set):
  ``manual manual-<status>`` for its diamond and ``manual-label`` for the actor's name;
- the frame: ``axis``, ``tick``, ``tick-label``, ``lane lane-even|lane-odd``,
  ``lane-label``, ``lane-detail``, ``now`` (the end of the axis of an unfinished saga).

Executions sit in the upper half of their lane and compensations in the lower half, so a
step's undo reads right under what it undid. Tooltips (``<title>``) name the attempt, its
outcome, who acted and the command's message id, never the request or the response, and
only the safe head of an error (:func:`saga.masking.summarize`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from saga.masking import summarize
from saga.timeline import TimelineEntry
from saga.web.svg import coordinate as _n
from saga.web.svg import css_token as _token
from saga.web.svg import escaped as _text

LABEL_WIDTH = 200
"""Room on the left for the lane labels."""
RIGHT_MARGIN = 28
"""Room on the right for the last tick label."""
AXIS_HEIGHT = 26
LANE_HEIGHT = 34
BAR_HEIGHT = 12
MIN_BAR_WIDTH = 3.0
"""An attempt that took no visible time still shows."""
MARKER_SIZE = 5.0
LABEL_CHARS = 26
"""Lane labels longer than this are cut (the whole name is in the label's tooltip)."""

# Tick steps in milliseconds, each a round number in its own unit.
_TICK_STEPS_MS = (
    *(1, 2, 5, 10, 20, 50, 100, 200, 500),
    *(n * 1_000 for n in (1, 2, 5, 10, 15, 30)),
    *(n * 60_000 for n in (1, 2, 5, 10, 15, 30)),
    *(n * 3_600_000 for n in (1, 2, 3, 6, 12)),
    *(n * 86_400_000 for n in (1, 2, 7, 14, 30)),
)
_MAX_TICKS = 8
_UNITS = ((86_400_000, "d"), (3_600_000, "h"), (60_000, "min"), (1_000, "s"), (1, "ms"))


@dataclass(frozen=True, slots=True)
class Lane:
    """One row of the drawing: a step, or one branch of a parallel group."""

    step_index: int
    branch: int | None
    step_name: str
    journey: str
    top: float


@dataclass(frozen=True, slots=True)
class Bar:
    """One attempt, from when it was dispatched to its outcome (or the axis' end)."""

    lane: int
    """Index into :attr:`TimelineLayout.lanes`."""
    x: float
    y: float
    width: float
    height: float
    classes: tuple[str, ...]
    tooltip: str


@dataclass(frozen=True, slots=True)
class Marker:
    """Where a person acted by hand, with who it was."""

    lane: int
    x: float
    y: float
    """The diamond's centre."""
    actor: str
    classes: tuple[str, ...]
    tooltip: str


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class TimelineLayout:
    width: int
    height: int
    plot_left: float
    plot_right: float
    span: timedelta
    """From the saga's start to the axis' end (its finish, or now)."""
    finished: bool
    lanes: tuple[Lane, ...]
    bars: tuple[Bar, ...]
    markers: tuple[Marker, ...]
    ticks: tuple[Tick, ...]


@dataclass(frozen=True, slots=True)
class _Scale:
    start: datetime
    span_ms: float
    left: float
    right: float

    def x(self, moment: datetime) -> float:
        """The x of ``moment``, kept on the axis (clocks of different hosts may disagree)."""
        fraction = _ms(moment - self.start) / self.span_ms
        return self.left + min(1.0, max(0.0, fraction)) * (self.right - self.left)


def timeline_layout(
    entries: Sequence[TimelineEntry],
    *,
    started_at: datetime,
    finished_at: datetime | None,
    now: datetime,
    width: int = 960,
) -> TimelineLayout:
    """Where every lane, bar, marker and tick goes; see :func:`timeline_svg`."""
    end = finished_at if finished_at is not None else max(now, started_at)
    span = max(end - started_at, timedelta(milliseconds=1))
    scale = _Scale(started_at, _ms(span), LABEL_WIDTH, width - RIGHT_MARGIN)
    ordered = sorted(entries, key=lambda e: e.started_at)
    lanes = _lanes(ordered)
    lane_of = {(lane.step_index, lane.branch): i for i, lane in enumerate(lanes)}
    bars: list[Bar] = []
    markers: list[Marker] = []
    for entry in ordered:
        index = lane_of[(entry.step_index, entry.branch)]
        if entry.actor is not None:
            markers.append(_marker(entry, index, lanes[index], scale))
        else:
            bars.append(_bar(entry, index, lanes[index], scale, end))
    return TimelineLayout(
        width=width,
        height=AXIS_HEIGHT + max(1, len(lanes)) * LANE_HEIGHT + 4,
        plot_left=scale.left,
        plot_right=scale.right,
        span=span,
        finished=finished_at is not None,
        lanes=tuple(lanes),
        bars=tuple(bars),
        markers=tuple(markers),
        ticks=_ticks(scale),
    )


def timeline_svg(
    entries: Sequence[TimelineEntry],
    *,
    started_at: datetime,
    finished_at: datetime | None,
    now: datetime,
    width: int = 960,
) -> str:
    """The saga's attempts as one ``<svg>`` element (classes only, every text escaped).

    ``entries`` are the timeline's (:func:`saga.timeline.load_entries`: one per attempt);
    the axis runs from ``started_at`` to ``finished_at``, or to ``now`` while the saga is
    unfinished, and so does every attempt still without an outcome."""
    layout = timeline_layout(
        entries, started_at=started_at, finished_at=finished_at, now=now, width=width
    )
    return render(layout)


def render(layout: TimelineLayout) -> str:
    """The SVG text of a layout."""
    label = (
        f"Timeline: {len(layout.bars) + len(layout.markers)} attempts in "
        f"{len(layout.lanes)} lanes over {_duration(_ms(layout.span))}"
        + ("" if layout.finished else " so far")
    )
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" role="img" '
        f'aria-label="{_text(label)}" viewBox="0 0 {layout.width} {layout.height}" '
        f'width="{layout.width}" height="{layout.height}">',
        f"<title>{_text(label)}</title>",
        '<defs><pattern id="timeline-hatch" patternUnits="userSpaceOnUse" width="6" '
        'height="6"><path class="hatch" d="M0,6 L6,0"/></pattern></defs>',
        *_lane_parts(layout),
        *_axis_parts(layout),
        *(_bar_part(bar) for bar in layout.bars),
        *(_marker_part(marker) for marker in layout.markers),
        "</svg>",
    ]
    return "\n".join(parts)


# --- layout -------------------------------------------------------------------------


def _lanes(ordered: Sequence[TimelineEntry]) -> list[Lane]:
    """A lane per (step, branch): steps in the order they first started, a group's own
    rows above its branches, branches by number."""
    first_seen: dict[int, int] = {}
    named: dict[tuple[int, int | None], TimelineEntry] = {}
    for position, entry in enumerate(ordered):
        first_seen.setdefault(entry.step_index, position)
        named.setdefault((entry.step_index, entry.branch), entry)
    keys = sorted(named, key=lambda k: (first_seen[k[0]], -1 if k[1] is None else k[1]))
    return [
        Lane(
            step_index=step_index,
            branch=branch,
            step_name=named[(step_index, branch)].step_name,
            journey=named[(step_index, branch)].journey,
            top=AXIS_HEIGHT + row * LANE_HEIGHT,
        )
        for row, (step_index, branch) in enumerate(keys)
    ]


def _bar(entry: TimelineEntry, index: int, lane: Lane, scale: _Scale, end: datetime) -> Bar:
    is_open = entry.finished_at is None
    left = scale.x(entry.started_at)
    right = scale.x(end if entry.finished_at is None else entry.finished_at)
    width = max(MIN_BAR_WIDTH, right - left)
    left = min(left, scale.right - width)  # an instant row at the very end stays inside
    compensating = entry.action == "compensate"
    classes: tuple[str, ...] = ("bar", f"bar-{_token(entry.status)}", f"bar-{_token(entry.action)}")
    if is_open:
        classes = (*classes, "open")
    return Bar(
        lane=index,
        x=left,
        y=lane.top + (LANE_HEIGHT / 2 + 1 if compensating else 4),
        width=width,
        height=BAR_HEIGHT,
        classes=classes,
        tooltip=_tooltip(entry),
    )


def _marker(entry: TimelineEntry, index: int, lane: Lane, scale: _Scale) -> Marker:
    # A signal's row spans the wait it ended; the person acted at its end.
    moment = entry.finished_at if entry.finished_at is not None else entry.started_at
    return Marker(
        lane=index,
        x=scale.x(moment),
        y=lane.top + LANE_HEIGHT / 2,
        actor=entry.actor or "",
        classes=("manual", f"manual-{_token(entry.status)}"),
        tooltip=_tooltip(entry),
    )


def _tooltip(entry: TimelineEntry) -> str:
    where = f"{entry.step_name} ({entry.journey})"
    if entry.branch is not None:
        where += f", branch {entry.branch}"
    lines = [where, f"{entry.action} #{entry.attempt}: {entry.status}"]
    if entry.duration_ms is not None:
        lines.append(f"took {_duration(entry.duration_ms)}")
    elif entry.finished_at is None:
        lines.append("no outcome yet")
    if entry.actor is not None:
        lines.append(f"by {entry.actor}")
    if entry.message_id is not None:
        lines.append(f"message {entry.message_id}")
    error = summarize(entry.error)
    if error:
        lines.append(f"error: {error}")
    return "\n".join(lines)


def _ticks(scale: _Scale) -> tuple[Tick, ...]:
    step = next((s for s in _TICK_STEPS_MS if scale.span_ms / s <= _MAX_TICKS), _TICK_STEPS_MS[-1])
    unit, name = next((u, n) for u, n in _UNITS if step >= u)
    count = int(scale.span_ms // step)
    return tuple(
        Tick(
            x=scale.left + (n * step / scale.span_ms) * (scale.right - scale.left),
            label=f"{_number(n * step / unit)} {name}",
        )
        for n in range(count + 1)
    )


# --- SVG text -----------------------------------------------------------------------


def _lane_parts(layout: TimelineLayout) -> list[str]:
    parts: list[str] = []
    for row, lane in enumerate(layout.lanes):
        parity = "lane-even" if row % 2 == 0 else "lane-odd"
        detail = lane.journey if lane.branch is None else f"{lane.journey} · branch {lane.branch}"
        parts.append(
            f'<g class="lane {parity}">'
            f'<rect class="lane-band" x="0" y="{_n(lane.top)}" width="{layout.width}" '
            f'height="{LANE_HEIGHT}"/>'
            f'<text class="lane-label" x="8" y="{_n(lane.top + 14)}">'
            f"<title>{_text(lane.step_name)}</title>{_text(_cut(lane.step_name))}</text>"
            f'<text class="lane-detail" x="8" y="{_n(lane.top + 28)}">'
            f"{_text(_cut(detail))}</text></g>"
        )
    return parts


def _axis_parts(layout: TimelineLayout) -> list[str]:
    bottom = layout.height - 4
    parts = [
        f'<g class="axis"><line class="axis-line" x1="{_n(layout.plot_left)}" '
        f'y1="{AXIS_HEIGHT}" x2="{_n(layout.plot_right)}" y2="{AXIS_HEIGHT}"/>'
    ]
    for tick in layout.ticks:
        parts.append(
            f'<line class="tick" x1="{_n(tick.x)}" y1="{AXIS_HEIGHT - 4}" x2="{_n(tick.x)}" '
            f'y2="{bottom}"/><text class="tick-label" x="{_n(tick.x)}" '
            f'y="{AXIS_HEIGHT - 8}">{_text(tick.label)}</text>'
        )
    if not layout.finished:
        parts.append(
            f'<line class="now" x1="{_n(layout.plot_right)}" y1="{AXIS_HEIGHT}" '
            f'x2="{_n(layout.plot_right)}" y2="{bottom}"><title>now</title></line>'
        )
    parts.append("</g>")
    return parts


def _bar_part(bar: Bar) -> str:
    return (
        f'<rect class="{" ".join(bar.classes)}" x="{_n(bar.x)}" y="{_n(bar.y)}" '
        f'width="{_n(bar.width)}" height="{_n(bar.height)}">'
        f"<title>{_text(bar.tooltip)}</title></rect>"
    )


def _marker_part(marker: Marker) -> str:
    x, y, r = marker.x, marker.y, MARKER_SIZE
    diamond = (
        f"M{_n(x)},{_n(y - r)} L{_n(x + r)},{_n(y)} L{_n(x)},{_n(y + r)} L{_n(x - r)},{_n(y)} Z"
    )
    return (
        f'<g class="{" ".join(marker.classes)}"><path d="{diamond}"/>'
        f'<text class="manual-label" x="{_n(x + r + 3)}" y="{_n(y + 4)}">'
        f"{_text(marker.actor)}</text><title>{_text(marker.tooltip)}</title></g>"
    )


# --- small helpers ------------------------------------------------------------------


def _ms(delta: timedelta) -> float:
    return delta.total_seconds() * 1000


def _duration(ms: float) -> str:
    if ms < 1_000:
        return f"{ms:.1f} ms"
    if ms < 60_000:
        return f"{ms / 1_000:.2f} s"
    if ms < 3_600_000:
        return f"{ms / 60_000:.1f} min"
    if ms < 86_400_000:
        return f"{ms / 3_600_000:.1f} h"
    return f"{ms / 86_400_000:.1f} d"


def _number(value: float) -> str:
    return f"{value:g}"


def _cut(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"
