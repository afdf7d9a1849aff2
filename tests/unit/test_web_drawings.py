"""The console's drawings: a saga's timeline, a definition's diagram and the stats charts,
checked as parsed SVG (well-formed, classes only, every text escaped) and as numbers."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from saga.timeline import TimelineEntry
from saga.web.charts import line_chart_svg, nice_ticks, stacked_bars_svg, time_ticks
from saga.web.diagram import POSITIONS_PER_ROW, definition_svg
from saga.web.timeline_svg import MIN_BAR_WIDTH, timeline_layout, timeline_svg

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2026, 12, 3, 10, 0, tzinfo=UTC)
EVIL = "<script>alert('x')</script> & \"quoted\""


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def entry(
    step_index: int,
    name: str,
    started_ms: float,
    finished_ms: float | None,
    *,
    action: str = "execute",
    status: str = "succeeded",
    attempt: int = 1,
    branch: int | None = None,
    actor: str | None = None,
    error: str | None = None,
    journey: str = "care",
    request: Any = None,
    message_id: uuid.UUID | None = None,
) -> TimelineEntry:
    return TimelineEntry(
        step_index=step_index,
        step_name=name,
        journey=journey,
        action=action,
        status=status,
        attempt=attempt,
        error=error,
        started_at=at(started_ms),
        finished_at=None if finished_ms is None else at(finished_ms),
        duration_ms=None if finished_ms is None else finished_ms - started_ms,
        actor=actor,
        request=request,
        branch=branch,
        message_id=message_id,
    )


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # noqa: S314 - our own output, parsed to check it
    assert root.tag == f"{SVG}svg"
    assert root.get("role") == "img"
    assert root.get("aria-label")
    assert root.get("viewBox")
    return root


def with_class(root: ET.Element, name: str, tag: str | None = None) -> list[ET.Element]:
    return [
        e
        for e in root.iter()
        if name in (e.get("class") or "").split() and (tag is None or e.tag == f"{SVG}{tag}")
    ]


def texts(element: ET.Element) -> Iterator[str]:
    for e in element.iter():
        if e.tag in (f"{SVG}text", f"{SVG}tspan", f"{SVG}title") and e.text:
            yield e.text


def assert_classes_only(root: ET.Element) -> None:
    """What the console's Content-Security-Policy needs: no inline style, no script, no
    event handler attribute."""
    for e in root.iter():
        assert e.tag not in (f"{SVG}script", f"{SVG}style", f"{SVG}foreignObject"), e.tag
        assert "style" not in e.attrib, e.attrib
        assert not any(name.startswith("on") for name in e.attrib), e.attrib


# --- the timeline -------------------------------------------------------------------

# A booking with a parallel group whose second branch fails, its undo, a wait and an
# operator's skip, given out of order.
BOOKING = [
    entry(1, "authorize", 100, 300, branch=0, journey="plan"),
    entry(0, "reserve", 0, 100),
    entry(1, "award", 100, 250, branch=1, journey="gamification", status="retried"),
    entry(
        1,
        "award",
        260,
        400,
        branch=1,
        journey="gamification",
        status="failed",
        attempt=2,
        error="not allowed: member 123.456.789-09 over the limit",
        request={"cpf": "123.456.789-09"},
        message_id=uuid.UUID("00000000-0000-4000-8000-000000000001"),
    ),
    entry(1, "authorize", 400, 500, branch=0, journey="plan", action="compensate"),
    entry(0, "reserve", 500, None, action="compensate", status="dispatched"),
    entry(2, "review", 150, None, status="waiting", journey="saga"),
    entry(0, "reserve", 700, 700, status="skipped", actor="ops.maria"),
]


def booking_svg(**kwargs: Any) -> str:
    options: dict[str, Any] = {"started_at": T0, "finished_at": None, "now": at(1000)}
    return timeline_svg(BOOKING, **{**options, **kwargs})


def test_the_timeline_is_well_formed_svg_with_classes_only() -> None:
    root = parse(booking_svg())
    assert_classes_only(root)
    assert root.get("viewBox", "").startswith("0 0 960 ")


def test_one_lane_per_step_and_branch_in_the_order_steps_first_started() -> None:
    layout = timeline_layout(BOOKING, started_at=T0, finished_at=None, now=at(1000))
    assert [(lane.step_index, lane.branch, lane.step_name) for lane in layout.lanes] == [
        (0, None, "reserve"),
        (1, 0, "authorize"),
        (1, 1, "award"),
        (2, None, "review"),
    ]
    assert [lane.top for lane in layout.lanes] == sorted(lane.top for lane in layout.lanes)
    labels = with_class(parse(booking_svg()), "lane-label")
    assert [next(texts(label)) for label in labels] == ["reserve", "authorize", "award", "review"]
    details = [e.text for e in with_class(parse(booking_svg()), "lane-detail")]
    assert details == ["care", "plan · branch 0", "gamification · branch 1", "saga"]


def test_bars_are_placed_in_proportion_to_time() -> None:
    layout = timeline_layout(BOOKING, started_at=T0, finished_at=at(1000), now=at(5000))
    plot = layout.plot_right - layout.plot_left
    authorize = next(b for b in layout.bars if "bar-execute" in b.classes and b.lane == 1)
    assert authorize.x == pytest.approx(layout.plot_left + 0.1 * plot)
    assert authorize.width == pytest.approx(0.2 * plot)
    # The same numbers in the SVG text (to its one decimal).
    rects = with_class(
        parse(timeline_svg(BOOKING, started_at=T0, finished_at=at(1000), now=at(5000))), "bar"
    )
    drawn = {(float(r.get("x", "nan")), float(r.get("width", "nan"))) for r in rects}
    assert (round(authorize.x, 1), round(authorize.width, 1)) in drawn


def test_an_attempt_without_an_outcome_runs_open_to_now() -> None:
    layout = timeline_layout(BOOKING, started_at=T0, finished_at=None, now=at(1000))
    assert layout.span == timedelta(seconds=1)
    open_bars = [b for b in layout.bars if "open" in b.classes]
    assert {b.classes[1] for b in open_bars} == {"bar-dispatched", "bar-waiting"}
    for bar in open_bars:
        assert bar.x + bar.width == pytest.approx(layout.plot_right)
    finished = [b for b in layout.bars if "open" not in b.classes]
    assert all(b.x + b.width < layout.plot_right for b in finished)
    root = parse(booking_svg())
    assert len(with_class(root, "now")) == 1
    assert with_class(parse(booking_svg(finished_at=at(1000))), "now") == []


def test_compensations_share_their_step_lane_below_the_executions() -> None:
    layout = timeline_layout(BOOKING, started_at=T0, finished_at=None, now=at(1000))
    lane = [b for b in layout.bars if b.lane == 1]
    execute = next(b for b in lane if "bar-execute" in b.classes)
    undo = next(b for b in lane if "bar-compensate" in b.classes)
    assert undo.y >= execute.y + execute.height
    assert "bar-succeeded" in undo.classes


def test_a_wait_is_hatched() -> None:
    root = parse(booking_svg())
    waits = with_class(root, "bar-waiting", "rect")
    assert len(waits) == 1
    assert root.find(f".//{SVG}pattern[@id='timeline-hatch']") is not None


def test_a_manual_action_is_a_marker_with_the_actor_not_a_bar() -> None:
    layout = timeline_layout(BOOKING, started_at=T0, finished_at=None, now=at(1000))
    assert len(layout.bars) == len(BOOKING) - 1
    (marker,) = layout.markers
    assert (marker.actor, marker.lane) == ("ops.maria", 0)
    assert marker.classes == ("manual", "manual-skipped")
    assert marker.x == pytest.approx(
        layout.plot_left + 0.7 * (layout.plot_right - layout.plot_left)
    )
    (drawn,) = with_class(parse(booking_svg()), "manual", "g")
    assert "ops.maria" in list(texts(drawn))
    assert any("by ops.maria" in text for text in texts(drawn))


def test_tooltips_say_what_happened_and_keep_patient_data_out() -> None:
    svg = booking_svg()
    bars = with_class(parse(svg), "bar-failed")
    (tooltip,) = [text for bar in bars for text in texts(bar)]
    assert tooltip.splitlines() == [
        "award (gamification), branch 1",
        "execute #2: failed",
        "took 140.0 ms",
        "message 00000000-0000-4000-8000-000000000001",
        "error: not allowed",
    ]
    assert "123.456.789-09" not in svg  # neither the error's tail nor the request


def test_an_instant_attempt_still_shows() -> None:
    entries = [entry(0, "reserve", 0, 1000), entry(1, "confirm", 500, 500)]
    layout = timeline_layout(entries, started_at=T0, finished_at=at(1000), now=at(1000))
    assert min(b.width for b in layout.bars) == MIN_BAR_WIDTH
    at_the_end = [entry(0, "reserve", 0, 1000), entry(1, "confirm", 1000, 1000)]
    layout = timeline_layout(at_the_end, started_at=T0, finished_at=at(1000), now=at(1000))
    assert all(b.x + b.width <= layout.plot_right + 1e-9 for b in layout.bars)


def test_every_text_is_escaped() -> None:
    entries = [entry(0, EVIL, 0, 10, journey=EVIL, actor=None), entry(0, EVIL, 20, 30, actor=EVIL)]
    svg = timeline_svg(entries, started_at=T0, finished_at=at(50), now=at(50))
    assert "<script" not in svg
    root = parse(svg)
    assert_classes_only(root)
    assert EVIL in list(texts(root))  # shown as the text it is
    assert [e.text for e in with_class(root, "manual-label")] == [EVIL]


@pytest.mark.parametrize(
    ("span", "unit"),
    [
        (timedelta(milliseconds=40), " ms"),
        (timedelta(milliseconds=900), " ms"),
        (timedelta(seconds=12), " s"),
        (timedelta(minutes=20), " min"),
        (timedelta(hours=5), " h"),
        (timedelta(hours=60), " h"),
        (timedelta(days=10), " d"),
    ],
)
def test_ticks_suit_the_span(span: timedelta, unit: str) -> None:
    layout = timeline_layout([], started_at=T0, finished_at=T0 + span, now=T0 + span)
    labels = [tick.label for tick in layout.ticks]
    assert 2 <= len(labels) <= 9, labels
    assert labels[0] == f"0{unit}"
    assert all(label.endswith(unit) for label in labels), labels
    xs = [tick.x for tick in layout.ticks]
    assert xs == sorted(xs)
    assert xs[0] == layout.plot_left
    assert xs[-1] <= layout.plot_right + 1e-9


def test_the_same_input_draws_the_same_text() -> None:
    assert booking_svg() == booking_svg()
    assert booking_svg() != booking_svg(now=at(2000))


def test_an_empty_timeline_is_still_a_drawing() -> None:
    root = parse(timeline_svg([], started_at=T0, finished_at=None, now=T0))
    assert with_class(root, "bar") == []


# --- the definition diagram ---------------------------------------------------------


def step_document(name: str, **fields: Any) -> dict[str, Any]:
    return {
        "name": name,
        "journey": "care",
        "action": f"do_{name}",
        "compensation": f"undo_{name}",
        "no_compensation": None,
        "isolation": "read_committed",
        "timeout": 30.0,
        "retry": {"max_attempts": 3},
        "compensation_retry": {"max_attempts": 3},
        **fields,
    }


SHAPES = [
    step_document("reserve"),
    {"kind": "parallel", "name": "hold", "branches": [step_document("a"), step_document("b")]},
    {
        "kind": "await_event",
        "name": "review",
        "event": "claim_reviewed",
        "timeout": 86400.0,
        "on_timeout": "compensate",
        "when": None,
    },
    {
        "kind": "sub_saga",
        "name": "credit",
        "definition": {"name": "apply_wellness_credit", "version": 2},
        "payload": {},
    },
    step_document("confirm", compensation=None, no_compensation="last"),
]


def test_each_kind_of_position_is_drawn() -> None:
    root = parse(definition_svg(SHAPES))
    assert_classes_only(root)
    kinds = [
        (e.get("class") or "").split()[1]
        for e in root.iter(f"{SVG}g")
        if "position" in (e.get("class") or "").split()
    ]
    # The group's two branches are step boxes inside it.
    assert kinds == [
        "position-step",
        "position-parallel",
        "position-step",
        "position-step",
        "position-await_event",
        "position-sub_saga",
        "position-step",
    ]
    (group,) = with_class(root, "position-parallel")
    assert len(with_class(group, "position-step")) == 2
    assert "parallel 2 · hold" in list(texts(group))
    (wait,) = with_class(root, "position-await_event")
    assert wait.find(f"{SVG}polygon") is not None
    assert {"event: claim_reviewed", "timeout 1 d → compensate"} <= set(texts(wait))
    (child,) = with_class(root, "position-sub_saga")
    assert {"child saga 4", "credit", "apply_wellness_credit", "version 2"} <= set(texts(child))
    first = with_class(root, "position-step")[0]
    assert {"step 1", "reserve", "care · do_reserve", "undo: undo_reserve"} <= set(texts(first))
    assert "no undo (last)" in [e.text for e in with_class(root, "no-undo")]
    # One arrow into each position after the first.
    assert len(with_class(root, "arrowhead")) == len(SHAPES) - 1


def test_long_definitions_wrap_onto_new_rows() -> None:
    one_row = parse(definition_svg([step_document(f"s{n}") for n in range(POSITIONS_PER_ROW)]))
    two_rows = parse(definition_svg([step_document(f"s{n}") for n in range(POSITIONS_PER_ROW + 2)]))
    width, height = (float(v) for v in one_row.get("viewBox", "").split()[2:])
    wrapped_width, wrapped_height = (float(v) for v in two_rows.get("viewBox", "").split()[2:])
    assert wrapped_width == width
    assert wrapped_height > height
    boxes = [float(r.get("y", "nan")) for r in with_class(two_rows, "box", "rect")]
    assert len(set(boxes)) == 2
    assert len(with_class(two_rows, "arrowhead")) == POSITIONS_PER_ROW + 1


def test_counts_are_drawn_under_the_diagram_when_given() -> None:
    assert with_class(parse(definition_svg(SHAPES)), "counts") == []
    root = parse(definition_svg(SHAPES, counts={"parked": 1, "completed": 12, "running": 3}))
    (counts,) = with_class(root, "counts")
    assert [e.text for e in with_class(counts, "count")] == [
        "running 3",
        "parked 1",
        "completed 12",
    ]
    assert with_class(counts, "status-parked")


def test_the_diagram_escapes_every_text_and_survives_odd_documents() -> None:
    odd = [
        step_document(EVIL, journey=EVIL),
        {"kind": "teleport", "name": EVIL},
        {"kind": "parallel", "name": "empty", "branches": None},
        {"kind": "sub_saga", "name": "old", "definition": ["child", 1], "payload": {}},
    ]
    svg = definition_svg(odd, counts={EVIL: 1})
    assert "<script" not in svg
    root = parse(svg)
    assert_classes_only(root)
    titles = [t for t in texts(root) if EVIL in t]
    assert titles  # whole in the tooltips (cut to fit in the boxes)
    assert with_class(root, "position-unknown")
    assert {"child", "version 1"} <= set(texts(root))
    assert parse(definition_svg([]))


# --- the charts ---------------------------------------------------------------------


def y_labels(root: ET.Element) -> list[str]:
    return [e.text or "" for e in with_class(root, "y-tick")]


def x_labels(root: ET.Element) -> list[str]:
    return [e.text or "" for e in with_class(root, "x-tick")]


END = T0 + timedelta(hours=6)


def test_a_chart_with_no_point_says_so_inside_it() -> None:
    for svg in (
        line_chart_svg({}, title="p95", unit="ms", start=T0, end=END),
        line_chart_svg(
            {"p95": [(END + timedelta(hours=1), 5.0)]}, title="p95", unit="ms", start=T0, end=END
        ),
        stacked_bars_svg([], {}, title="outcomes", bucket=timedelta(hours=1)),
        stacked_bars_svg([T0], {"completed": [0]}, title="outcomes", bucket=timedelta(hours=1)),
    ):
        root = parse(svg)
        assert_classes_only(root)
        (empty,) = with_class(root, "empty")
        assert empty.text == "no data in this window"
    drawn = line_chart_svg({"p95": [(T0, 5.0)]}, title="p95", unit="ms", start=T0, end=END)
    assert with_class(parse(drawn), "empty") == []


def test_line_chart_ticks_are_round() -> None:
    series = {
        "p50": [(T0 + timedelta(minutes=30 * k), 100.0 + k) for k in range(12)],
        "p95": [(T0 + timedelta(minutes=30 * k), 870.0) for k in range(12)],
    }
    root = parse(line_chart_svg(series, title="latency", unit="ms", start=T0, end=END))
    assert y_labels(root) == ["0 ms", "250 ms", "500 ms", "750 ms", "1,000 ms"]
    assert x_labels(root) == [f"{h}:00" for h in range(10, 17)]
    lines = with_class(root, "line", "polyline")
    assert [line.get("class") for line in lines] == ["line series-0", "line series-1"]
    assert [e.text for e in with_class(root, "legend-label")] == ["p50", "p95"]
    # 870 of 1,000 up the plot: the p95 line sits at 87 % of the height.
    (plot,) = with_class(root, "plot")
    top, height = float(plot.get("y", "nan")), float(plot.get("height", "nan"))
    first_point = lines[1].get("points", "").split()[0]
    assert float(first_point.split(",")[1]) == pytest.approx(top + height * 0.13, abs=0.1)


def test_nice_and_time_ticks() -> None:
    assert nice_ticks(0, 10) == [0, 2.5, 5, 7.5, 10]
    assert nice_ticks(0, 10, whole=True) == [0, 5, 10]
    assert nice_ticks(0, 3, whole=True) == [0, 1, 2, 3]
    assert nice_ticks(0, 0) == [0, 0.25, 0.5, 0.75, 1]
    assert nice_ticks(0, 0.3) == [0, 0.1, 0.2, 0.3]
    assert nice_ticks(-5, 37) == [-20, 0, 20, 40]
    ticks = time_ticks(T0 + timedelta(minutes=7), T0 + timedelta(minutes=50))
    assert ticks == [T0 + timedelta(minutes=m) for m in (10, 20, 30, 40, 50)]


def test_stacked_bars_stack_in_proportion_with_status_classes() -> None:
    buckets = [T0 + timedelta(hours=h) for h in range(3)]
    stacks = {"completed": [6, 0, 2], "parked": [2, 0, 0]}
    root = parse(stacked_bars_svg(buckets, stacks, title="outcomes", bucket=timedelta(hours=1)))
    assert_classes_only(root)
    segments = with_class(root, "segment", "rect")
    assert [s.get("class") for s in segments] == [
        "segment series-0 status-completed",
        "segment series-1 status-parked",
        "segment series-0 status-completed",
    ]
    completed, parked, _ = (float(s.get("height", "nan")) for s in segments)
    assert completed == pytest.approx(3 * parked, abs=0.2)
    assert y_labels(root) == ["0", "2", "4", "6", "8"]
    swatches = with_class(root, "legend-swatch")
    assert [s.get("class") for s in swatches] == [
        "legend-swatch series-0 status-completed",
        "legend-swatch series-1 status-parked",
    ]
    with pytest.raises(ValueError, match="stack 'parked' has 1 counts for 3 buckets"):
        stacked_bars_svg(buckets, {"parked": [1]}, title="t", bucket=timedelta(hours=1))


def test_charts_escape_titles_units_and_names() -> None:
    svg = line_chart_svg({EVIL: [(T0, 1.0)]}, title=EVIL, unit=EVIL, start=T0, end=END)
    bars = stacked_bars_svg([T0], {EVIL: [3]}, title=EVIL, bucket=timedelta(hours=1))
    for drawn in (svg, bars):
        assert "<script" not in drawn
        root = parse(drawn)
        assert_classes_only(root)
        assert root.get("aria-label") == EVIL
        assert EVIL in list(texts(root))
    (segment,) = with_class(parse(bars), "segment")
    assert all(c.isascii() and (c.isalnum() or c in "_- ") for c in segment.get("class", ""))


def test_series_classes_cycle_through_eight() -> None:
    series = {f"s{n}": [(T0, float(n))] for n in range(10)}
    root = parse(line_chart_svg(series, title="t", unit="", start=T0, end=END))
    classes = [line.get("class") for line in with_class(root, "line", "polyline")]
    assert classes[8] == "line series-0"
    assert classes[9] == "line series-1"
