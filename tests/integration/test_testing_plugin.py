"""saga.testing.pytest_plugin as a user meets it: a suite of its own (a conftest enabling
the plugin, a test file of journey sagas in a SagaTestEnvironment) run by a pytest process
of its own, on the configured server or, without DATABASE_URL, an embedded one."""

from __future__ import annotations

import asyncio
import os
import re

import asyncpg
import pytest

from saga.settings import to_plain_url
from saga.testing.database import NAME_PREFIX

pytest_plugins = ["pytester"]

pytestmark = [pytest.mark.integration, pytest.mark.embedded]

CONFTEST = """
pytest_plugins = ["saga.testing.pytest_plugin"]
"""

# What a user's project would configure: pytest-asyncio runs the async tests.
INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
filterwarnings = error
addopts = --strict-markers
"""

USER_TESTS = """
import uuid
from typing import Any

from journeys import world
from journeys.care.sagas import BOOK_APPOINTMENT
from journeys.care.service import SERVICE as CARE
from journeys.gamification.service import SERVICE as GAMIFICATION
from journeys.plan.service import SERVICE as PLAN
from saga import Connection, SagaStatus, Settings, load_settings
from saga.testing import Faults, SagaTestEnvironment

settings = load_settings()


def booking_environment(database_url: str, faults: Faults) -> SagaTestEnvironment:
    return SagaTestEnvironment(
        settings=settings,
        database_url=database_url,
        journeys=[CARE, PLAN, GAMIFICATION],
        faults=faults,
    )


async def a_member_and_a_slot(env: SagaTestEnvironment) -> tuple[dict[str, Any], uuid.UUID]:
    async def build(conn: Connection) -> tuple[world.Member, world.Slot]:
        member = await world.create_member(conn)
        provider = await world.create_provider(conn)
        return member, (await world.create_slots(conn, provider, 1))[0]

    member, slot = await env.scene(build)
    payload = {
        "user_id": str(member.user_id),
        "slot_id": str(slot.slot_id),
        "amount_cents": 20_000,
        "reason": None,
        "points": 10,
        "source_journey": "care",
        "award_reason": "appointment_booked",
    }
    return payload, slot.slot_id


async def test_a_refused_coverage_releases_the_slot(saga_database_url: str) -> None:
    faults = Faults().refuse("authorize_coverage", "not covered: over the limit")
    async with booking_environment(saga_database_url, faults) as env:
        payload, slot_id = await a_member_and_a_slot(env)
        outcome = await env.run(BOOK_APPOINTMENT, payload)

        assert outcome.status is SagaStatus.COMPENSATED
        timeline = await env.timeline(outcome.id)
        assert [(e.step_name, e.action, e.status) for e in timeline.entries] == [
            ("reserve_slot", "execute", "succeeded"),
            ("authorize_coverage", "execute", "failed"),
            ("reserve_slot", "compensate", "succeeded"),
        ]
        slot_now = await env.query(
            "SELECT status FROM care_journey.care_slot WHERE id = $1", slot_id
        )
        assert slot_now == [{"status": "open"}]


async def test_a_lost_command_is_sent_again_after_its_timeout(saga_database_url: str) -> None:
    faults = Faults().time_out("award_points", times=1)
    async with booking_environment(saga_database_url, faults) as env:
        payload, _ = await a_member_and_a_slot(env)
        outcome = await env.run(BOOK_APPOINTMENT, payload)

        assert outcome.status is SagaStatus.COMPLETED, outcome.error
        timeline = await env.timeline(outcome.id)
        awards = [e for e in timeline.entries if e.step_name == "award_points"]
        assert [e.status for e in awards] == ["timed_out", "succeeded"]


async def test_each_test_has_a_database_of_its_own(
    saga_database_url: str, saga_settings: Settings
) -> None:
    environment = SagaTestEnvironment(
        settings=saga_settings, database_url=saga_database_url, journeys=[CARE]
    )
    async with environment as env:
        sagas = await env.query("SELECT count(*) AS n FROM shared.saga_instance")
        assert sagas == [{"n": 0}]
"""

# The first test again, expecting the compensation to have failed: it must fail.
FIRST_TEST = USER_TESTS[
    USER_TESTS.index("async def test_a_refused") : USER_TESTS.index("async def test_a_lost")
]
BROKEN_TEST = FIRST_TEST.replace(
    "test_a_refused_coverage_releases_the_slot", "test_with_a_wrong_timeline"
).replace('"compensate", "succeeded"', '"compensate", "failed"')

DURATION = re.compile(r"^\s*(?P<seconds>[\d.]+)s (?P<phase>setup|call|teardown)\s+(?P<test>\S+)$")


def kit_databases() -> set[str]:
    """The kit's databases on the configured server (none to look at without one)."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        return set()

    async def names() -> set[str]:
        conn = await asyncpg.connect(to_plain_url(url))
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", f"{NAME_PREFIX}%"
            )
        finally:
            await conn.close()
        return {row["datname"] for row in rows}

    return asyncio.run(names())


def phase_times(lines: list[str]) -> dict[str, dict[str, float]]:
    """Each test's setup, call and teardown seconds, from ``--durations=0``."""
    times: dict[str, dict[str, float]] = {}
    for line in lines:
        match = DURATION.match(line)
        if match:
            test = match["test"].rpartition("::")[2]
            times.setdefault(test, {})[match["phase"]] = float(match["seconds"])
    return times


def test_a_users_suite_runs_journey_sagas_on_databases_the_plugin_makes(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI)
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_booking=USER_TESTS + "\n\n" + BROKEN_TEST)
    before = kit_databases()

    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--durations=0", "--durations-min=0", "-vv", timeout=150
    )

    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*test_a_refused_coverage_releases_the_slot PASSED*",
            "*test_a_lost_command_is_sent_again_after_its_timeout PASSED*",
            "*test_each_test_has_a_database_of_its_own PASSED*",
            "*test_with_a_wrong_timeline FAILED*",
            "*At index 2 diff: (*'compensate', 'succeeded') != (*'compensate', 'failed')",
        ]
    )
    assert kit_databases() <= before, "the run left databases behind"

    # The first test's setup also makes the template (and starts the embedded server);
    # every other phase is what one test costs once the database is up.
    times = phase_times(result.outlines)
    first = "test_a_refused_coverage_releases_the_slot"  # the file's first, so run first
    print(f"\ntemplate ready in about {times[first]['setup']:.2f} s (first test's setup)")
    for test, phases in times.items():
        after_setup = phases.get("call", 0.0) + phases.get("teardown", 0.0)
        per_test = after_setup + (0.0 if test == first else phases.get("setup", 0.0))
        print(f"{test}: {per_test:.3f} s ({', '.join(f'{p} {s:.3f}' for p, s in phases.items())})")
