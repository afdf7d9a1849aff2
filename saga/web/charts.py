"""Small SVG charts for the console's stats page: lines over time and stacked bars per
time bucket, with no JavaScript and no chart library.

Classes only, no inline styles (the console's Content-Security-Policy): each series is
``series-<n>`` (``n`` = its place in the mapping, modulo 8) and, in stacked bars, also
``status-<name>`` so saga statuses keep their colours; ``chart``, ``chart-title``,
``plot``, ``grid``, ``axis-line``, ``tick-label``, ``line``, ``point``, ``segment``,
``legend``, ``legend-swatch``, ``legend-label`` and ``empty`` (the message drawn inside
a chart with nothing to show). A ``line`` is a ``<polyline>``, which SVG fills black
unless the stylesheet says ``fill: none``. Every text is escaped; the same input gives
the same text.

Times on the axis are shown in ``start``'s time zone (the first bucket's for bars).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from saga.web.svg import coordinate as _n
from saga.web.svg import css_token as _token
from saga.web.svg import escaped as _text

SERIES_CLASSES = 8
MAX_POINTS_WITH_MARKERS = 100
"""Beyond this many points a series is drawn as its line alone (no dot per point)."""
_LEFT, _RIGHT, _TOP, _BOTTOM = 56.0, 16.0, 30.0, 46.0
_Y_TICKS = 4
_MAX_X_TICKS = 7
_TIME_STEPS = tuple(
    timedelta(seconds=s)
    for s in (
        1, 2, 5, 10, 15, 30,
        60, 120, 300, 600, 900, 1_800,
        3_600, 7_200, 10_800, 21_600, 43_200,
        86_400, 172_800, 604_800, 1_209_600, 2_592_000,
    )
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Frame:
    """The plot area of a chart and its two scales."""

    width: int
    height: int
    start: datetime
    end: datetime
    low: float
    high: float

    @property
    def left(self) -> float:
        return _LEFT

    @property
    def right(self) -> float:
        return self.width - _RIGHT

    @property
    def top(self) -> float:
        return _TOP

    @property
    def bottom(self) -> float:
        return self.height - _BOTTOM

    def x(self, moment: datetime) -> float:
        span = (self.end - self.start).total_seconds() or 1.0
        fraction = (moment - self.start).total_seconds() / span
        return self.left + fraction * (self.right - self.left)

    def y(self, value: float) -> float:
        fraction = (value - self.low) / ((self.high - self.low) or 1.0)
        return self.bottom - fraction * (self.bottom - self.top)


def nice_ticks(
    low: float, high: float, count: int = _Y_TICKS, *, whole: bool = False
) -> list[float]:
    """Round values covering ``[low, high]`` in about ``count`` steps of 1, 2, 2.5 or 5
    times a power of ten (``0, 250, 500, 750, 1000``); ``whole`` keeps to whole steps,
    for counts (``0, 1, 2`` rather than ``0, 0.5, 1``)."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / count
    if whole:
        raw = max(raw, 1.0)
    power = 10.0 ** math.floor(math.log10(raw))
    multiples = (1.0, 2.0, 5.0, 10.0) if whole and power == 1.0 else (1.0, 2.0, 2.5, 5.0, 10.0)
    step = next(m * power for m in multiples if m * power >= raw)
    first = math.floor(low / step) * step
    last = math.ceil(high / step) * step
    # Rounded so that 0.1 * 3 is labelled 0.3, not 0.30000000000000004.
    return [round(first + n * step, 10) for n in range(round((last - first) / step) + 1)]


def time_ticks(start: datetime, end: datetime) -> list[datetime]:
    """Round moments within ``[start, end]`` (multiples of a step such as 5 min or 6 h,
    counted from midnight in ``start``'s zone), at most about seven."""
    span = end - start
    step = next((s for s in _TIME_STEPS if span / s <= _MAX_X_TICKS), _TIME_STEPS[-1])
    midnight = start.replace(hour=0, minute=0, second=0, microsecond=0)
    first = midnight + step * math.ceil((start - midnight) / step)
    ticks = []
    moment = first
    while moment <= end:
        ticks.append(moment)
        moment += step
    return ticks


def line_chart_svg(
    series: Mapping[str, Sequence[tuple[datetime, float]]],
    *,
    title: str,
    unit: str,
    start: datetime,
    end: datetime,
    width: int = 720,
    height: int = 220,
) -> str:
    """One line per named series over ``[start, end]`` (points outside are left out),
    with a legend, time ticks below and round value ticks on the left labelled in
    ``unit``; "no data" is drawn inside the plot when no series has a point."""
    kept = {
        name: sorted((p for p in points if start <= p[0] <= end), key=lambda p: p[0])
        for name, points in series.items()
    }
    values = [v for points in kept.values() for _, v in points]
    ticks = nice_ticks(min([0.0, *values]), max([0.0, *values]))
    frame = Frame(width, height, start, max(end, start + timedelta(seconds=1)), ticks[0], ticks[-1])
    parts = [*_frame_parts(frame, title, ticks, unit)]
    for index, (name, points) in enumerate(kept.items()):
        parts.extend(_series_parts(frame, index, name, points, unit))
    if not values:
        parts.append(_empty(frame))
    parts.extend(_legend(frame, [(index, name, ()) for index, name in enumerate(kept)]))
    return _svg(frame, title, parts)


def stacked_bars_svg(
    buckets: Sequence[datetime],
    stacks: Mapping[str, Sequence[int]],
    *,
    title: str,
    bucket: timedelta,
    width: int = 720,
    height: int = 220,
) -> str:
    """A bar per bucket (starting at each of ``buckets``, ``bucket`` long), stacked from
    the bottom in the order of ``stacks`` (each one count per bucket). Raises
    :class:`ValueError` when a stack's length differs from the buckets'."""
    for name, counts in stacks.items():
        if len(counts) != len(buckets):
            raise ValueError(f"stack {name!r} has {len(counts)} counts for {len(buckets)} buckets")
    if bucket <= timedelta(0):
        raise ValueError(f"bucket must be positive; got {bucket}")
    start = min(buckets) if buckets else datetime(1970, 1, 1, tzinfo=UTC)
    end = max(buckets) + bucket if buckets else start + bucket
    totals = [sum(counts[i] for counts in stacks.values()) for i in range(len(buckets))]
    ticks = nice_ticks(0.0, float(max([0, *totals])), whole=True)
    frame = Frame(width, height, start, end, ticks[0], ticks[-1])
    parts = [*_frame_parts(frame, title, ticks, "")]
    slot = frame.x(start + bucket) - frame.x(start)
    bar_width = max(1.0, slot * 0.8)
    for i, moment in enumerate(buckets):
        parts.extend(_stack(frame, moment, bar_width, slot, [(n, c[i]) for n, c in stacks.items()]))
    if not any(totals):
        parts.append(_empty(frame))
    legend = [(index, name, (f"status-{_token(name)}",)) for index, name in enumerate(stacks)]
    parts.extend(_legend(frame, legend))
    return _svg(frame, title, parts)


# --- parts --------------------------------------------------------------------------


def _svg(frame: Frame, title: str, parts: Sequence[str]) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
            f'aria-label="{_text(title)}" viewBox="0 0 {frame.width} {frame.height}" '
            f'width="{frame.width}" height="{frame.height}">',
            f"<title>{_text(title)}</title>",
            *parts,
            "</svg>",
        ]
    )


def _frame_parts(frame: Frame, title: str, values: Sequence[float], unit: str) -> list[str]:
    parts = [
        f'<text class="chart-title" x="{_n(frame.left)}" y="18">{_text(title)}</text>',
        f'<rect class="plot" x="{_n(frame.left)}" y="{_n(frame.top)}" '
        f'width="{_n(frame.right - frame.left)}" height="{_n(frame.bottom - frame.top)}"/>',
    ]
    suffix = f" {unit}" if unit else ""
    for value in values:
        y = frame.y(value)
        parts.append(
            f'<line class="grid" x1="{_n(frame.left)}" y1="{_n(y)}" x2="{_n(frame.right)}" '
            f'y2="{_n(y)}"/><text class="tick-label y-tick" x="{_n(frame.left - 6)}" '
            f'y="{_n(y + 4)}">{_text(_tick(value) + suffix)}</text>'
        )
    ticks = time_ticks(frame.start, frame.end)
    step = ticks[1] - ticks[0] if len(ticks) > 1 else frame.end - frame.start
    for moment in ticks:
        x = frame.x(moment)
        parts.append(
            f'<line class="axis-line" x1="{_n(x)}" y1="{_n(frame.bottom)}" x2="{_n(x)}" '
            f'y2="{_n(frame.bottom + 4)}"/><text class="tick-label x-tick" x="{_n(x)}" '
            f'y="{_n(frame.bottom + 16)}">{_text(_moment(moment, step))}</text>'
        )
    return parts


def _series_parts(
    frame: Frame, index: int, name: str, points: Sequence[tuple[datetime, float]], unit: str
) -> list[str]:
    if not points:
        return []
    css = f"series-{index % SERIES_CLASSES}"
    coordinates = " ".join(f"{_n(frame.x(t))},{_n(frame.y(v))}" for t, v in points)
    parts = [
        f'<polyline class="line {css}" points="{coordinates}">'
        f"<title>{_text(name)}</title></polyline>"
    ]
    if len(points) <= MAX_POINTS_WITH_MARKERS:
        for moment, value in points:
            shown = _value(value) + (f" {unit}" if unit else "")
            label = f"{name}: {shown} at {moment.isoformat()}"
            parts.append(
                f'<circle class="point {css}" cx="{_n(frame.x(moment))}" '
                f'cy="{_n(frame.y(value))}" r="2.5"><title>{_text(label)}</title></circle>'
            )
    return parts


def _stack(
    frame: Frame, moment: datetime, bar_width: float, slot: float, counts: Sequence[tuple[str, int]]
) -> list[str]:
    x = frame.x(moment) + (slot - bar_width) / 2
    below = 0
    parts = []
    for index, (name, count) in enumerate(counts):
        if count <= 0:
            continue
        top, bottom = frame.y(below + count), frame.y(below)
        css = f"segment series-{index % SERIES_CLASSES} status-{_token(name)}"
        parts.append(
            f'<rect class="{css}" x="{_n(x)}" y="{_n(top)}" width="{_n(bar_width)}" '
            f'height="{_n(bottom - top)}"><title>{_text(f"{moment.isoformat()}: {name} {count}")}'
            "</title></rect>"
        )
        below += count
    return parts


def _legend(frame: Frame, entries: Sequence[tuple[int, str, tuple[str, ...]]]) -> list[str]:
    parts = ['<g class="legend">']
    x, y = frame.left, frame.height - 10.0
    for index, name, extra in entries:
        css = " ".join((f"series-{index % SERIES_CLASSES}", *extra))
        parts.append(
            f'<rect class="legend-swatch {css}" x="{_n(x)}" y="{_n(y - 9)}" width="10" '
            f'height="10"/><text class="legend-label" x="{_n(x + 14)}" y="{_n(y)}">'
            f"{_text(name)}</text>"
        )
        x += 14 + 7 * len(name) + 16
    parts.append("</g>")
    return parts


def _empty(frame: Frame) -> str:
    x = (frame.left + frame.right) / 2
    y = (frame.top + frame.bottom) / 2
    return f'<text class="empty" x="{_n(x)}" y="{_n(y)}">no data in this window</text>'


# --- small helpers ------------------------------------------------------------------


def _moment(moment: datetime, step: timedelta) -> str:
    if step >= timedelta(days=1):
        return moment.strftime("%b %d")
    if moment.hour == 0 and moment.minute == 0 and moment.second == 0:
        return moment.strftime("%b %d")
    if step >= timedelta(minutes=1):
        return moment.strftime("%H:%M")
    return moment.strftime("%H:%M:%S")


def _tick(value: float) -> str:
    """A tick's value in full: ticks are round already."""
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:,.10f}".rstrip("0").rstrip(".")


def _value(value: float) -> str:
    """A measured value to three or so significant figures."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return f"{value:.3g}"
