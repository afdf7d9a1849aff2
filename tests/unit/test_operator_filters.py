"""The filters ``saga ls`` and the bulk actions share, read from a command line."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime, timedelta, timezone

import pytest

from saga.errors import ConfigurationError
from saga.machine import SagaStatus
from saga.operator.filters import (
    SagaFilter,
    add_filter_arguments,
    filter_from_args,
    parse_duration,
    parse_moment,
)

NOW = datetime(2026, 11, 25, 18, 0, 0, tzinfo=UTC)


def read(*argv: str) -> SagaFilter:
    parser = argparse.ArgumentParser()
    add_filter_arguments(parser)
    return filter_from_args(parser.parse_args(list(argv)), now=NOW)


def test_no_flags_select_everything() -> None:
    selected = read()
    assert selected == SagaFilter()
    assert selected.is_empty()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--status", "parked"], (SagaStatus.PARKED,)),
        (["--status", "running,compensating"], (SagaStatus.RUNNING, SagaStatus.COMPENSATING)),
        (
            ["--status", "running", "--status", "COMPLETED,aborted"],
            (SagaStatus.RUNNING, SagaStatus.COMPLETED, SagaStatus.ABORTED),
        ),
        (["--status", "parked, parked"], (SagaStatus.PARKED,)),
    ],
)
def test_statuses_repeat_or_come_as_comma_lists(
    argv: list[str], expected: tuple[SagaStatus, ...]
) -> None:
    selected = read(*argv)
    assert selected.statuses == expected
    assert not selected.is_empty()


def test_an_unknown_status_names_the_flag_and_the_value() -> None:
    with pytest.raises(ConfigurationError) as caught:
        read("--status", "running,stuck")
    message = str(caught.value)
    assert message.startswith("--status: unknown status 'stuck'")
    assert "running, compensating" in message
    assert "\n" not in message


def test_an_empty_item_in_a_list_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"^--definition: empty name in 'a,,b'$"):
        read("--definition", "a,,b")


def test_definitions_and_journeys_repeat_or_come_as_comma_lists() -> None:
    selected = read(
        "--definition", "book_appointment", "--definition", "submit_claim,book_appointment",
        "--journey", "care,plan",
    )  # fmt: skip
    assert selected.definitions == ("book_appointment", "submit_claim")
    assert selected.journeys == ("care", "plan")


def test_parked_is_the_parked_status() -> None:
    selected = read("--parked")
    assert selected.parked
    assert selected.statuses == ()
    assert selected.effective_statuses == (SagaStatus.PARKED,)
    assert read("--parked", "--status", "running").effective_statuses == (
        SagaStatus.RUNNING,
        SagaStatus.PARKED,
    )
    assert read("--parked", "--status", "parked").effective_statuses == (SagaStatus.PARKED,)


def test_children_of_takes_a_saga_id_and_names_the_flag_when_it_is_not_one() -> None:
    parent = "6f0c2b1e-4d3a-4c59-8e7f-1a2b3c4d5e6f"
    selected = read("--children-of", parent)
    assert str(selected.children_of) == parent
    assert not selected.is_empty()
    with pytest.raises(ConfigurationError) as raised:
        read("--children-of", "6f0c")
    assert str(raised.value) == "--children-of: not a saga id (a UUID): '6f0c'"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30),
        ("10m", 600),
        ("2h", 7200),
        ("7d", 7 * 86400),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 2H ", 7200),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text, "--stuck-for") == timedelta(seconds=seconds)
    assert read("--stuck-for", text).stuck_for == timedelta(seconds=seconds)
    assert read(f"--since={text}").started_since == NOW - timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0s", "0m0s", "-5m", "-2h"])
def test_zero_and_negative_durations_are_refused(text: str) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"^--stuck-for: a duration must be positive; got '{text}'$"
    ):
        read(f"--stuck-for={text}")
    with pytest.raises(ConfigurationError, match=r"^--since: a duration must be positive"):
        read(f"--since={text}")


@pytest.mark.parametrize("text", ["10", "5 minutes", "2w", "h", "1h-5m", ""])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(
        ConfigurationError, match=rf"^--stuck-for: expected a duration .*; got '{text}'$"
    ):
        read(f"--stuck-for={text}")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-24T10:00:00Z", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24T10:00:00+00:00", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        # A zone other than UTC keeps its meaning: 07:00 at -03:00 is 10:00 UTC.
        ("2026-11-24T07:00:00-03:00", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        # No zone: taken as UTC, the zone the saga log is kept in.
        ("2026-11-24T10:00:00", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24 10:00", datetime(2026, 11, 24, 10, tzinfo=UTC)),
        ("2026-11-24", datetime(2026, 11, 24, tzinfo=UTC)),
    ],
)
def test_iso_times_with_and_without_a_zone(text: str, expected: datetime) -> None:
    moment = parse_moment(text, "--since", now=NOW)
    assert moment == expected
    assert moment.tzinfo is not None
    assert read("--until", text).started_until == expected


def test_a_zone_is_kept_not_replaced() -> None:
    moment = parse_moment("2026-11-24T07:00:00-03:00", "--until", now=NOW)
    assert moment.utcoffset() == timezone(timedelta(hours=-3)).utcoffset(None)


@pytest.mark.parametrize("text", ["yesterday", "2026-13-01", "24/11/2026", "now"])
def test_bad_times_name_the_flag_and_the_value(text: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        read("--until", text)
    message = str(caught.value)
    assert message.startswith("--until: expected an ISO time")
    assert message.endswith(f"got {text!r}")


def test_since_must_be_before_until() -> None:
    window = read("--since", "2h", "--until", "30m")
    assert window.started_since == NOW - timedelta(hours=2)
    assert window.started_until == NOW - timedelta(minutes=30)
    with pytest.raises(ConfigurationError, match=r"^--since \(.*\) must be before --until"):
        read("--since", "30m", "--until", "2h")
    with pytest.raises(ConfigurationError, match="must be before --until"):
        read("--since", "2026-11-24T10:00:00Z", "--until", "2026-11-24T10:00:00Z")


def test_durations_count_back_from_the_current_time_by_default() -> None:
    parser = argparse.ArgumentParser()
    add_filter_arguments(parser)
    before = datetime.now(UTC)
    since = filter_from_args(parser.parse_args(["--since", "1h"])).started_since
    after = datetime.now(UTC)
    assert since is not None
    assert before - timedelta(hours=1) <= since <= after - timedelta(hours=1)


def test_every_filter_at_once() -> None:
    selected = read(
        "--status", "running", "--definition", "d", "--journey", "care", "--since", "7d",
        "--until", "2026-11-25T12:00:00Z", "--stuck-for", "10m", "--parked",
    )  # fmt: skip
    assert selected == SagaFilter(
        statuses=(SagaStatus.RUNNING,),
        definitions=("d",),
        journeys=("care",),
        started_since=NOW - timedelta(days=7),
        started_until=datetime(2026, 11, 25, 12, tzinfo=UTC),
        stuck_for=timedelta(minutes=10),
        parked=True,
    )


def test_waiting_for_takes_events_and_narrows_the_selection() -> None:
    selected = read("--waiting-for", "claim_reviewed,second_opinion", "--waiting-for", "x")
    assert selected.waiting_for == ("claim_reviewed", "second_opinion", "x")
    assert not selected.is_empty()
    assert read("--status", "waiting").statuses == (SagaStatus.WAITING,)
    with pytest.raises(ConfigurationError, match="--waiting-for: empty name"):
        read("--waiting-for", "a,,b")
