"""How ``saga show`` reads and draws a parallel group's attempts: no database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from saga.cli.inspect import _timeline_lines
from saga.timeline import TimelineEntry, one_per_attempt

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


def row(
    step: str,
    journey: str,
    action: str,
    status: str,
    attempt: int,
    at_ms: float,
    *,
    index: int = 1,
    branch: int | None = None,
    took_ms: float | None = None,
    error: str | None = None,
) -> TimelineEntry:
    return TimelineEntry(
        step_index=index,
        step_name=step,
        journey=journey,
        action=action,
        status=status,
        attempt=attempt,
        error=error,
        started_at=T0 + timedelta(milliseconds=at_ms),
        finished_at=None,
        duration_ms=took_ms,
        branch=branch,
    )


def test_each_branch_keeps_its_own_attempts() -> None:
    # Both branches are at attempt 1 of the same position: one's outcome must not hide
    # the other's dispatch, which is still waiting for its answer.
    entries = [
        row("authorize", "plan", "execute", "dispatched", 1, 0, branch=0),
        row("award", "gamification", "execute", "dispatched", 1, 0, branch=1),
        row("authorize", "plan", "execute", "succeeded", 1, 0, branch=0, took_ms=30),
    ]
    kept = one_per_attempt(entries)
    assert sorted((e.step_name, e.status) for e in kept) == [
        ("authorize", "succeeded"),
        ("award", "dispatched"),
    ]


def test_a_group_is_drawn_one_column_per_branch() -> None:
    entries = [
        row("reserve", "care", "execute", "succeeded", 1, 0, index=0, took_ms=20),
        row("authorize", "plan", "execute", "succeeded", 1, 25, branch=0, took_ms=30),
        row("award", "gamification", "execute", "failed", 1, 25, branch=1, error="refused"),
        row("authorize", "plan", "compensate", "succeeded", 1, 60, branch=0, took_ms=8),
        row("reserve", "care", "compensate", "succeeded", 1, 80, index=0, took_ms=9),
    ]
    lines = _timeline_lines(entries, T0)
    assert "reserve" in lines[0]
    assert lines[1].endswith("group at step 1, execute: 2 branches")
    titles, attempts, error = lines[2], lines[3], lines[4]
    assert [title.strip() for title in titles.split(" | ")] == [
        "[0] authorize (plan)",
        "[1] award (gamification)",
    ]
    # The columns line up: each branch's cells start where its title does.
    assert attempts.index("| +25 ms #1 failed") == titles.index("| [1] award")
    assert error.strip() == "|   refused"
    assert lines[5].endswith("group at step 1, compensate: 1 branch")
    assert lines[6].strip() == "[0] authorize (plan)"
    assert "reserve" in lines[8]
    assert "compensate" in lines[8]
