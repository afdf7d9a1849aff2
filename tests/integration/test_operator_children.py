"""Operators' actions on child sagas and on parents at a child saga's position, on sagas
that really ran (participants, the broker, PostgreSQL): ``retry``, ``compensate``,
``skip`` and ``abort`` at each position (docs/operating.md says how each acts), a child's
end written by an operator's action reaching its parent, and ``saga ls --children-of``.

The parents are those of ``test_child_sagas``: reserve (care), the child (authorize on
plan, award on gamification), confirm (care). With no gamification participant, a child
waits at award for as long as the test likes."""

from __future__ import annotations

import json
import uuid

import pytest

from saga.coordinator.children import child_saga_id
from saga.definition import SagaDefinition
from saga.machine import SagaStatus
from saga.operator.actions import SagaActions
from saga.operator.decisions import Action
from saga.shapes import AwaitEvent, SubSaga
from saga.transport import Topics
from tests.integration.conftest import SagaEnvironment
from tests.integration.sagas import (
    cluster,
    create_effect_tables,
    effects,
    executions,
    step_log,
    wait_until,
)
from tests.integration.test_child_sagas import (
    AUTHORIZE,
    AWARD,
    CHILD,
    CHILD_PAYLOAD,
    CONFIRM,
    RESERVE,
    children_of,
    parent,
    parent_payload,
)
from tests.integration.test_operator_actions import manual_rows, operator, request
from tests.integration.test_operator_shapes import cli_json, saga_cli

pytestmark = pytest.mark.integration

WITHOUT_GAMIFICATION = ("care", "plan")

CHILD_AT_AWARD = (
    "EXISTS (SELECT 1 FROM shared.saga_instance c WHERE c.parent_id = i.id "
    "AND c.status = 'running' AND c.current_step = 1)"
)
"""The parent's child has authorized and waits on award (nobody serves gamification)."""

APPROVED = "credit_approved"
SHAPED_CHILD = SagaDefinition(
    "test_child_approved", 1, [AUTHORIZE, AwaitEvent("approval", APPROVED, 60.0), AWARD]
)


async def the_child(env: SagaEnvironment, parent_id: uuid.UUID) -> uuid.UUID:
    [child] = await children_of(env, parent_id)
    return uuid.UUID(str(child["id"]))


async def statuses(env: SagaEnvironment, parent_id: uuid.UUID) -> list[tuple[int, str]]:
    return [(c["parent_attempt"], c["status"]) for c in await children_of(env, parent_id)]


async def status_of(env: SagaEnvironment, saga_id: uuid.UUID) -> str:
    found = await env.database.run_driver(
        lambda conn: conn.fetchval("SELECT status FROM shared.saga_instance WHERE id = $1", saga_id)
    )
    return str(found)


async def abort_child(
    env: SagaEnvironment, actions: SagaActions, parent_id: uuid.UUID
) -> uuid.UUID:
    """Abort the parent's child as an operator would, and see the parent park on it."""
    child_id = await the_child(env, parent_id)
    aborted = await actions.apply(child_id, request(Action.ABORT))
    assert aborted.status is SagaStatus.ABORTED
    assert aborted.notes == (f"its end (aborted) is sent to its parent saga {parent_id}",)
    await wait_until(env.database, parent_id, "i.status = 'parked'")
    return child_id


async def test_retry_starts_an_aborted_child_again_and_undoing_later_reaches_the_new_one(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("ops_child_retry")
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=WITHOUT_GAMIFICATION) as run,
        operator(env) as actions,
    ):
        coordinator = run.coordinators[0]
        await coordinator.register(CHILD)
        completes = await coordinator.start(definition, parent_payload())
        fails_later = await coordinator.start(definition, parent_payload(refuse="confirm"))
        first_children = {}
        for saga_id in (completes, fails_later):
            await wait_until(env.database, saga_id, CHILD_AT_AWARD)
            # A straight-line child: its abort writes its end in its one outbox slot.
            first_children[saga_id] = await abort_child(env, actions, saga_id)
        parked = await coordinator.status(completes)
        assert "was aborted by an operator" in (parked.error or "")

        second = child_saga_id(completes, 1, 2)
        dry = await actions.apply(completes, request(Action.RETRY), dry_run=True)
        assert (dry.before, dry.after) == (
            "parked at credit (execute) #1",
            "running at credit (execute) #2",
        )
        assert dry.notes == (f"starts child saga {second} (test_child_credit v1, attempt 2)",)
        assert await statuses(env, completes) == [(1, "aborted")]  # nothing written

        run.start_participant("gamification")
        for saga_id in (completes, fails_later):
            retried = await actions.apply(saga_id, request(Action.RETRY))
            assert retried.applied
            assert retried.command == "child test_child_credit v1 #2"
        completed = await coordinator.wait(completes, timeout=30)
        compensated = await coordinator.wait(fails_later, timeout=30)
        await wait_until(env.database, child_saga_id(fails_later, 1, 2), "i.status = 'compensated'")

        listed = await cli_json(env, "ls", "--children-of", str(completes))
        bad = await saga_cli(env, "ls", "--children-of", "not-a-saga")
        bulk = await saga_cli(
            env, "abort", "--children-of", str(completes), "--reason", "look at them", "--json"
        )

    assert completed.status is SagaStatus.COMPLETED
    assert {"authorize_id", "award_id"} <= dict(completed.context)["credit"].keys()
    assert await statuses(env, completes) == [(1, "aborted"), (2, "completed")]
    assert await effects(env.database, second) == ["authorize", "award"]
    assert await effects(env.database, completes) == ["confirm", "reserve"]
    rows = await manual_rows(env.database, completes)
    assert rows[0][:6] == (
        "credit",
        "execute",
        "retried",
        1,
        "alice",
        "retried by alice: plan service fixed",
    )

    # confirm refused after the second child completed: the parent undid the position
    # through that child (attempt 2), not the aborted first one.
    assert compensated.status is SagaStatus.COMPENSATED
    assert await statuses(env, fails_later) == [(1, "aborted"), (2, "compensated")]
    again = child_saga_id(fails_later, 1, 2)
    assert await executions(env.database, again) == [
        ("authorize", "do"),
        ("award", "do"),
        ("award", "undo"),
        ("authorize", "undo"),
    ]
    assert await effects(env.database, again) == []
    assert await effects(env.database, fails_later) == []
    # The aborted child's work is the operator's: nothing undid its authorization.
    assert "authorize" in await effects(env.database, first_children[fails_later])

    # saga ls --children-of: both attempts, newest first; a bad id is one line, exit 2.
    assert [(s["id"], s["status"]) for s in listed["sagas"]] == [
        (str(second), "completed"),
        (str(first_children[completes]), "aborted"),
    ]
    assert bad.returncode == 2
    assert bad.stderr.strip() == "saga: error: --children-of: not a saga id (a UUID): 'not-a-saga'"
    # The bulk actions take the same filter (a dry run; both are finished, so exit 1).
    assert bulk.returncode == 1, bulk.stderr
    judged = json.loads(bulk.stdout)
    assert judged["dry_run"] is True
    assert {s["saga_id"] for s in judged["sagas"]} == {str(second), str(first_children[completes])}
    assert all("nothing to abort" in s["refused"] for s in judged["sagas"])


async def test_compensate_skip_and_abort_of_a_parent_parked_by_its_aborted_child(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("ops_child_parked")
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=WITHOUT_GAMIFICATION) as run,
        operator(env) as actions,
    ):
        coordinator = run.coordinators[0]
        await coordinator.register(CHILD)
        undone = await coordinator.start(definition, parent_payload())
        skipped = await coordinator.start(definition, parent_payload())
        stopped = await coordinator.start(definition, parent_payload())
        for saga_id in (undone, skipped, stopped):
            await wait_until(env.database, saga_id, CHILD_AT_AWARD)
        # As an operator runs it: its own process, with the broker.
        undone_child = await the_child(env, undone)
        cli = await saga_cli(env, "abort", str(undone_child), "--reason", "bad credit")
        assert cli.returncode == 0, cli.stderr
        assert f"its end (aborted) is sent to its parent saga {undone}" in cli.stdout
        await wait_until(env.database, undone, "i.status = 'parked'")
        skipped_child = await abort_child(env, actions, skipped)
        await abort_child(env, actions, stopped)

        compensated = await actions.apply(undone, request(Action.COMPENSATE))
        wrong = await actions.apply(skipped, request(Action.SKIP, step="confirm"))
        by_hand = await actions.apply(
            skipped, request(Action.SKIP, step="credit", result={"credit_id": "by-hand"})
        )
        aborted = await actions.apply(stopped, request(Action.ABORT))
        undone_summary = await coordinator.wait(undone, timeout=30)
        skipped_summary = await coordinator.wait(skipped, timeout=30)

    assert compensated.applied
    assert compensated.command == "release #1"
    assert compensated.notes == (
        f"child saga {undone_child} stays aborted: what it did is not undone by this saga "
        f"(`saga show {undone_child}`)",
    )
    assert undone_summary.status is SagaStatus.COMPENSATED
    assert await effects(env.database, undone) == []
    assert await effects(env.database, undone_child) == ["authorize"]
    rows = await manual_rows(env.database, undone)
    assert rows[0][:5] == ("credit", "execute", "aborted", 1, "alice")

    assert wrong.refused is not None
    assert "not 'confirm'" in wrong.refused
    assert by_hand.applied
    assert by_hand.command == "confirm #1"
    assert skipped_summary.status is SagaStatus.COMPLETED
    assert skipped_summary.context["credit"] == {"credit_id": "by-hand"}
    assert await effects(env.database, skipped) == ["confirm", "reserve"]
    assert await statuses(env, skipped) == [(1, "aborted")]
    assert await effects(env.database, skipped_child) == ["authorize"]

    assert aborted.status is SagaStatus.ABORTED
    assert await effects(env.database, stopped) == ["reserve"]


async def test_actions_on_a_parent_whose_child_still_runs(saga_env: SagaEnvironment) -> None:
    env = saga_env
    definition = parent("ops_child_running")
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=WITHOUT_GAMIFICATION) as run,
        operator(env) as actions,
    ):
        coordinator = run.coordinators[0]
        await coordinator.register(CHILD)
        undone = await coordinator.start(definition, parent_payload())
        left = await coordinator.start(definition, parent_payload())
        for saga_id in (undone, left):
            await wait_until(env.database, saga_id, CHILD_AT_AWARD)
        child = await the_child(env, undone)
        left_child = await the_child(env, left)

        retried = await saga_cli(env, "retry", str(undone), "--reason", "try again")
        skipped = await actions.apply(undone, request(Action.SKIP, step="credit"))
        shown = await saga_cli(env, "show", str(undone))
        dry = await actions.apply(undone, request(Action.COMPENSATE), dry_run=True)
        assert await status_of(env, child) == "running"  # the dry run asked nothing
        compensated = await actions.apply(undone, request(Action.COMPENSATE))
        aborted = await actions.apply(left, request(Action.ABORT))

        # Award's command waited for gamification all along: it runs, then is undone.
        run.start_participant("gamification")
        undone_summary = await coordinator.wait(undone, timeout=30)
        await wait_until(env.database, left_child, "i.status = 'completed'")

    assert retried.returncode == 1
    assert (
        f"the saga waits at 'credit' while its child saga {child} runs: it is running; "
        f"act on the child (`saga retry {child}`)"
    ) in retried.stderr
    assert skipped.refused is not None
    assert f"`saga skip {child}`" in skipped.refused
    assert shown.returncode == 0, shown.stderr
    assert "current    child saga 1 credit, execute, attempt 1" in shown.stdout
    assert f"child      {child} test_child_credit running at credit" in shown.stdout

    assert dry.after == "compensating at credit (compensate) #1"
    assert dry.notes == (
        f"asks child saga {child} to compensate; this saga undoes what came before once it has",
    )
    assert compensated.applied
    assert compensated.command == "compensate child #1"
    assert undone_summary.status is SagaStatus.COMPENSATED
    assert await statuses(env, undone) == [(1, "compensated")]
    assert await effects(env.database, child) == []
    assert await effects(env.database, undone) == []

    # abort stops the parent alone: its child went on, and its end changed nothing.
    assert aborted.notes == (
        f"child saga {left_child} (running) goes on: `saga abort {left_child}` stops it too",
    )
    assert await status_of(env, left) == "aborted"
    assert await effects(env.database, left_child) == ["authorize", "award"]
    assert await effects(env.database, left) == ["reserve"]


async def test_actions_on_a_parent_undoing_a_child_parked_in_its_compensation(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("ops_child_undoing")
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap) as run,
        operator(env) as actions,
    ):
        coordinator = run.coordinators[0]
        await coordinator.register(CHILD)
        # The child completes, confirm refuses, and the child's void breaks every time.
        saga_id = await coordinator.start(
            definition, parent_payload(refuse="confirm", child_error={"void": 99})
        )
        await wait_until(
            env.database,
            saga_id,
            "i.status = 'compensating' AND EXISTS (SELECT 1 FROM shared.saga_instance c "
            "WHERE c.parent_id = i.id AND c.status = 'parked')",
        )
        child = await the_child(env, saga_id)
        retried = await actions.apply(saga_id, request(Action.RETRY))
        skipped = await actions.apply(saga_id, request(Action.SKIP, step="credit"))
        again = await actions.apply(saga_id, request(Action.COMPENSATE))

        await abort_child(env, actions, saga_id)
        retried_parked = await actions.apply(saga_id, request(Action.RETRY))
        resumed = await actions.apply(saga_id, request(Action.COMPENSATE))
        summary = await coordinator.wait(saga_id, timeout=30)

    for refused in (retried, skipped):
        assert refused.refused is not None
        assert f"its child saga {child} undoes itself: it is parked" in refused.refused
    assert again.refused is not None
    assert "already compensating" in again.refused
    assert retried_parked.refused is not None
    assert "takes no request now" in retried_parked.refused

    assert resumed.applied
    assert resumed.command == "release #1"
    assert summary.status is SagaStatus.COMPENSATED
    # It resumed for the reason it was compensating in the first place.
    assert (summary.error or "").startswith("step 'confirm' failed")
    assert await effects(env.database, saga_id) == []
    # award was undone before the child parked; the authorization is the operator's.
    assert await effects(env.database, child) == ["authorize"]
    rows = await manual_rows(env.database, saga_id)
    assert [row[:6] for row in rows if row[0] == "credit"] == [
        (
            "credit",
            "compensate",
            "skipped",
            1,
            "alice",
            "compensation resumed by alice: plan service fixed",
        )
    ]


async def test_a_shaped_childs_abort_parks_its_parent_and_actions_on_a_child_reach_it(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = SagaDefinition(
        "ops_shaped_child",
        1,
        [RESERVE, SubSaga("credit", SHAPED_CHILD.key, payload=CHILD_PAYLOAD), CONFIRM],
    )
    await create_effect_tables(env.database)
    async with (
        cluster(env.settings, env.database, env.bootstrap) as run,
        operator(env) as actions,
    ):
        coordinator = run.coordinators[0]
        await coordinator.register(SHAPED_CHILD)
        saga_id = await coordinator.start(definition, parent_payload())
        await wait_until(
            env.database,
            saga_id,
            "EXISTS (SELECT 1 FROM shared.saga_instance c "
            "WHERE c.parent_id = i.id AND c.status = 'waiting')",
        )
        first = await abort_child(env, actions, saga_id)

        retried = await actions.apply(saga_id, request(Action.RETRY))
        second = child_saga_id(saga_id, 1, 2)
        await wait_until(env.database, second, "i.status = 'waiting'")
        # On the child itself, an action is as on any saga; its end reaches the parent.
        approved = await actions.apply(
            second, request(Action.SKIP, step="approval", result={"by": "alice"})
        )
        summary = await coordinator.wait(saga_id, timeout=30)

    assert retried.applied
    assert retried.command == "child test_child_approved v1 #2"
    assert approved.applied
    assert approved.command == "award #1"
    assert summary.status is SagaStatus.COMPLETED
    assert dict(summary.context)["credit"]["approval"] == {"by": "alice"}
    assert await statuses(env, saga_id) == [(1, "aborted"), (2, "completed")]
    assert await effects(env.database, second) == ["authorize", "award"]
    assert await effects(env.database, first) == ["authorize"]
    assert await effects(env.database, saga_id) == ["confirm", "reserve"]


async def test_retry_applies_a_childs_end_its_parent_never_heard_of(
    saga_env: SagaEnvironment,
) -> None:
    env = saga_env
    definition = parent("ops_child_end_lost")
    await create_effect_tables(env.database)
    # Actions that publish nothing: what they write waits in the outbox.
    silent = SagaActions(env.database, Topics.from_settings(env.settings), None)
    async with (
        cluster(env.settings, env.database, env.bootstrap, journeys=WITHOUT_GAMIFICATION) as run,
        operator(env) as actions,
    ):
        coordinator = run.coordinators[0]
        await coordinator.register(CHILD)
        saga_id = await coordinator.start(definition, parent_payload())
        await wait_until(env.database, saga_id, CHILD_AT_AWARD)
        child = await the_child(env, saga_id)
        # No coordinator, so no relay: the child's end is written and then lost.
        await run.stop("coordinator-0")
        done = await silent.apply(
            child, request(Action.SKIP, step="award", result={"award_id": "by-hand"})
        )
        assert done.status is SagaStatus.COMPLETED
        lost = await env.database.run_driver(
            lambda conn: conn.execute(
                "DELETE FROM shared.saga_outbox WHERE saga_instance_id = $1 "
                "AND published_at IS NULL",
                child,
            )
        )
        assert lost == "DELETE 1"
        coordinator = run.start_coordinator("coordinator-1")

        compensate = await actions.apply(saga_id, request(Action.COMPENSATE))
        applied = await actions.apply(saga_id, request(Action.RETRY))
        summary = await coordinator.wait(saga_id, timeout=30)

    assert compensate.refused is not None
    assert "`saga retry` applies the child's end now" in compensate.refused
    assert applied.applied
    assert applied.command == "confirm #1"
    assert summary.status is SagaStatus.COMPLETED
    assert dict(summary.context)["credit"]["award_id"] == "by-hand"
    log = await step_log(env.database, saga_id)
    credit = [(row["status"], row["error"]) for row in log if row["step_name"] == "credit"]
    assert credit[-2:] == [
        (
            "retried",
            "retried (the child's end, completed, applied from the log) by alice: "
            "plan service fixed",
        ),
        ("succeeded", None),
    ]
