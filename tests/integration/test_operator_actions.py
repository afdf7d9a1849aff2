"""Operators' actions on sagas that really ran: retry, compensate, skip and abort, each
proven to move the saga as described, to leave effects exactly once (or none), and to be
recorded in the step log with who and why."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from saga.coordinator.service import COORDINATOR_OUTBOX
from saga.definition import SagaDefinition
from saga.errors import SagaNotFound
from saga.machine import SagaStatus
from saga.operator.actions import ActionRequest, SagaActions
from saga.operator.decisions import Action, Operator
from saga.outbox import OutboxPublisher
from saga.retry import RetryPolicy
from saga.store import Database
from saga.transport import Producer, Topics
from tests.conftest import REPO_ROOT
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    ALL_DONE,
    BOOKING,
    cluster,
    create_effect_tables,
    effects,
    executions,
    starter,
    wait_until,
)

pytestmark = pytest.mark.integration

ALICE = Operator("alice", "plan service fixed")


def request(action: Action, **kwargs: Any) -> ActionRequest:
    return ActionRequest(action, ALICE, **kwargs)


@contextlib.asynccontextmanager
async def operator(env: SagaEnvironment) -> AsyncIterator[SagaActions]:
    """The CLI's actions, publishing the commands they write right after the commit."""
    producer = Producer.from_settings(env.settings, bootstrap_servers=env.bootstrap)
    await producer.start()
    publisher = OutboxPublisher(env.database, producer, COORDINATOR_OUTBOX)
    try:
        yield SagaActions(env.database, Topics.from_settings(env.settings), publisher)
    finally:
        await publisher.close()
        await producer.stop()


async def manual_rows(database: Database, saga_id: uuid.UUID) -> list[tuple[Any, ...]]:
    rows = await database.run_driver(
        lambda conn: conn.fetch(
            """
            SELECT step_name, action, status, attempt, actor, error, response
            FROM shared.saga_step_log WHERE saga_instance_id = $1 AND actor IS NOT NULL
            ORDER BY created_at, started_at
            """,
            saga_id,
        )
    )
    return [tuple(row) for row in rows]


async def test_retry_resumes_a_parked_compensation_which_then_completes(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        starter(env) as coordinator,
        operator(env) as actions,
    ):
        # award refuses; void (authorize's compensation) breaks on its three attempts.
        saga_id = await coordinator.start(BOOKING, {"refuse": "award", "error": {"void": 3}})
        parked = await coordinator.wait(saga_id, timeout=30)
        assert parked.status is SagaStatus.PARKED
        assert await effects(env.database, saga_id) == ["authorize", "reserve"]

        outcome = await actions.apply(saga_id, request(Action.RETRY))
        summary = await coordinator.wait(saga_id, timeout=30)

    assert outcome.applied
    assert outcome.refused is None
    assert outcome.before == "parked at authorize (compensate) #3"
    assert outcome.after == "compensating at authorize (compensate) #4"
    assert outcome.command == "void #4"
    assert summary.status is SagaStatus.COMPENSATED
    assert summary.error == "step 'award' failed: award refused by the test"
    assert await effects(env.database, saga_id) == []
    assert await manual_rows(env.database, saga_id) == [
        (
            "authorize",
            "compensate",
            "retried",
            3,
            "alice",
            "retried by alice: plan service fixed",
            None,
        ),
        ("authorize", "compensate", "dispatched", 4, "alice", None, None),
    ]


async def test_retry_of_a_step_in_flight_runs_it_once(saga_env: SagaEnvironment) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=("care", "gamification")) as c,
        starter(env) as coordinator,
        operator(env) as actions,
    ):
        saga_id = await coordinator.start(BOOKING, {})
        await wait_until(env.database, saga_id, "i.current_step = 1")
        outcome = await actions.apply(saga_id, request(Action.RETRY))
        assert outcome.command == "authorize #2"
        # Both attempts now wait on the plan topic; the second is answered from the inbox.
        c.start_participant("plan")
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPLETED
    assert await executions(env.database, saga_id) == ALL_DONE


async def test_compensate_undoes_a_saga_whose_step_is_in_flight_once_however_often_asked(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=("care", "gamification")) as c,
        starter(env) as coordinator,
        operator(env) as actions,
        operator(env) as colleague,
    ):
        saga_id = await coordinator.start(BOOKING, {})
        await wait_until(env.database, saga_id, "i.current_step = 1")
        # Two operators at once: the row lock orders them, and the second finds the saga
        # already compensating.
        first, second = await asyncio.gather(
            actions.apply(saga_id, request(Action.COMPENSATE)),
            colleague.apply(saga_id, request(Action.COMPENSATE)),
        )
        outcome, other = (first, second) if first.applied else (second, first)
        assert not other.applied
        assert other.refused is not None
        assert other.refused.startswith("the saga is already compensating")
        assert outcome.after == "compensating at authorize (compensate) #1"
        # authorize may run when plan comes back (it was sent first); void then undoes it.
        c.start_participant("plan")
        summary = await coordinator.wait(saga_id, timeout=30)

    assert summary.status is SagaStatus.COMPENSATED
    assert summary.error == "compensation requested by alice: plan service fixed"
    assert await effects(env.database, saga_id) == []
    rows = await manual_rows(env.database, saga_id)
    assert [row[:5] for row in rows] == [
        ("authorize", "execute", "aborted", 1, "alice"),
        ("authorize", "compensate", "dispatched", 1, "alice"),
    ]


async def test_skip_counts_a_step_done_by_hand_with_its_result(saga_env: SagaEnvironment) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=("care", "plan")),
        starter(env) as coordinator,
        operator(env) as actions,
    ):
        saga_id = await coordinator.start(BOOKING, {})
        await wait_until(env.database, saga_id, "i.current_step = 2")
        wrong = await actions.apply(saga_id, request(Action.SKIP, step="confirm"))
        assert wrong.refused == (
            "the saga is at step 'award' (execute), not 'confirm'; skip acts only on the "
            "current step"
        )
        result = {"award_id": "granted-by-hand"}
        outcome = await actions.apply(saga_id, request(Action.SKIP, step="award", result=result))
        summary = await coordinator.wait(saga_id, timeout=30)

    assert outcome.command == "confirm #1"
    assert summary.status is SagaStatus.COMPLETED
    assert summary.context["award_id"] == "granted-by-hand"
    assert await effects(env.database, saga_id) == ["authorize", "confirm", "reserve"]
    rows = await manual_rows(env.database, saga_id)
    assert rows[0][:5] == ("award", "execute", "skipped", 1, "alice")
    assert rows[0][5] == "skipped by alice: plan service fixed"
    assert rows[0][6] == result


async def test_abort_stops_a_parked_saga_and_withdraws_a_command_waiting_its_backoff(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    # void is retried after a long backoff: its next attempt waits in the outbox.
    steps = list(BOOKING.steps)
    slow = RetryPolicy(max_attempts=5, initial_delay=60, max_delay=60, jitter=0)
    steps[1] = replace(steps[1], compensation_retry=slow)
    definition = SagaDefinition("abort_backoff", 1, steps)
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        starter(env) as coordinator,
        operator(env) as actions,
    ):
        saga_id = await coordinator.start(definition, {"refuse": "award", "error": {"void": 1}})
        await wait_until(env.database, saga_id, "i.step_attempt = 2 AND i.current_step = 1")
        outcome = await actions.apply(saga_id, request(Action.ABORT))
        again = await actions.apply(saga_id, request(Action.RETRY))
        summary = await coordinator.status(saga_id)
        with pytest.raises(SagaNotFound):
            await actions.apply(uuid.uuid4(), request(Action.ABORT))

    # The retry waiting out its backoff, and any row sent but not yet marked published.
    assert outcome.applied
    assert outcome.withdrawn >= 1
    assert outcome.after == "aborted at authorize (compensate) #2"
    assert again.refused == "the saga is aborted; there is nothing to retry"
    assert summary.status is SagaStatus.ABORTED
    assert summary.finished_at is not None
    assert summary.error is not None
    assert summary.error.startswith(
        "aborted by alice: plan service fixed (was compensating: step 'award' failed"
    )
    unpublished = await env.database.run_driver(
        lambda conn: conn.fetchval(
            "SELECT count(*) FROM shared.saga_outbox "
            "WHERE saga_instance_id = $1 AND published_at IS NULL",
            saga_id,
        )
    )
    assert unpublished == 0
    # Nothing was undone: aborting hands the saga to a person as it stands.
    assert await effects(env.database, saga_id) == ["authorize", "reserve"]


# The command line: what an operator types.


async def saga_cli(env: SagaEnvironment, *argv: str) -> subprocess.CompletedProcess[str]:
    """``saga *argv`` as its own process against the test's database and broker."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "saga", *argv],
        cwd=REPO_ROOT,
        env={**env.process_environment(), "SAGA_ACTOR": "carol"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def one_line_error(done: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"saga: error: {text}"], done.stderr
    assert "Traceback" not in done.stderr


async def test_bulk_forms_are_a_dry_run_until_told_to_execute(saga_env: SagaEnvironment) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    broken = {"refuse": "award", "error": {"void": 3}}
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        starter(env) as coordinator,
    ):
        parked = [await coordinator.start(BOOKING, broken) for _ in range(3)]
        completed = await coordinator.start(BOOKING, {})
        for saga_id in [*parked, completed]:
            await coordinator.wait(saga_id, timeout=30)

        dry = await saga_cli(env, "abort", "--definition", "test_booking", "--reason", "look")
        # One of the four is completed: nothing applies to it, so the exit says so.
        assert dry.returncode == 1, dry.stderr
        for saga_id in parked:
            line = next(row for row in dry.stdout.splitlines() if str(saga_id) in row)
            assert "parked at authorize (compensate) #3" in line
            assert "would be aborted at authorize (compensate) #3" in line
        line = next(row for row in dry.stdout.splitlines() if str(completed) in row)
        assert "not applicable: the saga is completed; there is nothing to abort" in line
        assert "dry run: 3 would change, 1 would not; nothing was written" in dry.stdout
        for saga_id in parked:
            assert await manual_rows(env.database, saga_id) == []

        done = await saga_cli(
            env, "retry", "--parked", "--reason", "void fixed", "--execute", "--json"
        )
        assert done.returncode == 0, done.stderr
        report = json.loads(done.stdout)
        assert report["dry_run"] is False
        assert sorted(s["saga_id"] for s in report["sagas"]) == sorted(map(str, parked))
        assert {(s["applied"], s["after"], s["command"]) for s in report["sagas"]} == {
            (True, "compensating at authorize (compensate) #4", "void #4")
        }
        endings = [await coordinator.wait(saga_id, timeout=30) for saga_id in parked]

    assert {summary.status for summary in endings} == {SagaStatus.COMPENSATED}
    for saga_id in parked:
        assert await effects(env.database, saga_id) == []
        rows = await manual_rows(env.database, saga_id)
        assert [row[2:5] for row in rows] == [("retried", 3, "carol"), ("dispatched", 4, "carol")]
        assert rows[0][5] == "retried by carol: void fixed"


@pytest.mark.embedded
async def test_one_saga_by_id_and_every_bad_input_gets_one_line(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        starter(env) as coordinator,
    ):
        saga_id = await coordinator.start(BOOKING, {"refuse": "award", "error": {"void": 3}})
        await coordinator.wait(saga_id, timeout=30)
        sid = str(saga_id)

        aborted = await saga_cli(env, "abort", sid, "--reason", "refund by hand", "--actor", "bob")
        assert aborted.returncode == 0, aborted.stderr
        assert "aborted at authorize (compensate) #3" in aborted.stdout
        again = await saga_cli(env, "retry", sid, "--reason", "x")
        one_line_error(
            again, 1, f"cannot retry saga {sid}: the saga is aborted; there is nothing to retry"
        )
        unknown = uuid.uuid4()
        one_line_error(
            await saga_cli(env, "retry", str(unknown), "--reason", "x"),
            1,
            f"no saga with id {unknown}",
        )
        one_line_error(
            await saga_cli(env, "retry", "not-a-uuid", "--reason", "x"),
            2,
            "not a saga id (a UUID): 'not-a-uuid'",
        )
        one_line_error(
            await saga_cli(env, "skip", sid, "--step", "award", "--result", "[1]", "--reason", "x"),
            2,
            "--result must be a JSON object, got list",
        )
        one_line_error(
            await saga_cli(env, "compensate", "--reason", "x"),
            2,
            "give the id of the saga to compensate, or filters (--status, --definition, ...) "
            "to select several",
        )
        one_line_error(
            await saga_cli(env, "retry", sid, "--parked", "--reason", "x"),
            2,
            "give a saga id or filters, not both",
        )
        bad_status = await saga_cli(env, "retry", "--status", "stuck", "--reason", "x")
        assert bad_status.returncode == 2
        assert "--status" in bad_status.stderr
        assert "Traceback" not in bad_status.stderr
        summary = await coordinator.status(saga_id)
        listed = await saga_cli(env, "ls", "--status", "aborted", "--json")
        shown = await saga_cli(env, "show", sid)

    assert summary.status is SagaStatus.ABORTED
    assert [s["id"] for s in json.loads(listed.stdout)["sagas"]] == [sid]
    assert "status     aborted" in shown.stdout
    aborted_line = next(line for line in shown.stdout.splitlines() if " by bob " in line)
    assert " aborted " in aborted_line
    assert aborted_line.endswith("by bob  aborted by bob: refund by hand")
    rows = await manual_rows(env.database, saga_id)
    assert [row[2:5] for row in rows] == [("aborted", 3, "bob")]
    assert rows[0][5] == "aborted by bob: refund by hand"
