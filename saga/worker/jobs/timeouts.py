"""Sagas no reply will move: attempts past their deadline and sagas past theirs.

A step (or compensation) attempt with no reply by its deadline counts as timed out: the
state machine sends it again with the same message id while attempts remain (the
participant answers a repeat from its inbox, so nothing runs twice), then fails the step
and compensates. At a parallel group each branch past its own deadline times out as its
own event (the saga's step deadline is the earliest of its branches'); a wait past its
deadline ends (``WaitExpired``: compensate or continue, as the definition says). A
running or waiting saga past its overall deadline is compensated from where it is.

Each batch claims its sagas through the saga log port
(:meth:`~saga.store.port.SagaLog.claim_overdue_steps`: on PostgreSQL ``FOR UPDATE SKIP
LOCKED``) and writes every transition under that claim, so two workers never judge the
same saga, and a coordinator applying a reply at that moment waits for the lock, then
finds the version moved and re-reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import datetime

import structlog

from saga import alerts, metrics, tracing
from saga.coordinator.children import child_check, child_saga_id, needed_children
from saga.coordinator.commands import (
    ConsumedSignal,
    PreparedWrite,
    command_step,
    logged_names,
    message_id,
    prepare_write,
)
from saga.coordinator.replies import publish, trace_saga_end
from saga.coordinator.signals import chain, consume_kept_signals
from saga.definition import SagaDefinition
from saga.logging import saga_context
from saga.machine import (
    InstanceState,
    LogEntry,
    LogStatus,
    Outcome,
    Phase,
    SagaStatus,
    StepEvent,
    Transition,
    WaitExpired,
    advance,
    expire,
)
from saga.masking import summarize
from saga.store.port import ClaimedSagas, SagaLog, SettleClaimed
from saga.store.postgres_log import PostgresSagaLog
from saga.store.records import InstanceRow
from saga.transport import Topics
from saga.worker.job import BatchResult, Job, JobContext

log = structlog.get_logger("saga.worker")

Decide = Callable[[SagaDefinition, InstanceRow, ClaimedSagas], Awaitable[Transition]]
Claim = Callable[[int, SettleClaimed["list[_Written]"]], Awaitable["list[_Written]"]]


@dataclass(frozen=True, slots=True)
class _Written:
    instance: InstanceRow
    definition_name: str
    step_name: str
    journey: str | None
    state: InstanceState
    prepared: PreparedWrite | None
    definition: SagaDefinition | None = None
    """None for a saga parked because its definition is not stored."""


async def _timed_out(
    definition: SagaDefinition, instance: InstanceRow, claimed: ClaimedSagas
) -> Transition:
    state = instance.state
    if state.child is not None:
        # A parent waiting on its child: not a timeout, a look at the child's row.
        child_id = child_saga_id(instance.id, state.current_step, state.child.attempt)
        return child_check(definition, instance, await claimed.load_instance(child_id))
    if state.status is SagaStatus.WAITING:
        return advance(definition, state, WaitExpired(state.current_step), payload=instance.payload)
    if state.branches:
        return _branches_timed_out(definition, instance)
    step = command_step(definition, state.current_step, None)
    event = StepEvent(
        state.current_step,
        state.phase,
        state.step_attempt,
        Outcome.TIMED_OUT,
        reason=f"no reply within {step.reply_wait(state.step_attempt):g} s",
    )
    return advance(definition, state, event, payload=instance.payload)


def _branches_timed_out(definition: SagaDefinition, instance: InstanceRow) -> Transition:
    """Each branch past its deadline times out as its own event, in one transition."""
    state = instance.state
    decided: Transition | None = None
    for branch in instance.overdue_branches:
        current = state.branches[branch]
        step = command_step(definition, state.current_step, branch)
        attempt = current.attempt if state.phase is Phase.EXECUTE else current.compensation_attempt
        event = StepEvent(
            state.current_step,
            state.phase,
            attempt,
            Outcome.TIMED_OUT,
            reason=f"no reply within {step.reply_wait(attempt):g} s",
            branch=branch,
        )
        applied = advance(definition, state, event, payload=instance.payload)
        if applied.ignored is not None:
            continue
        decided = applied if decided is None else chain(decided, applied)
        state = applied.state
    if decided is None:
        return Transition(instance.state, ignored="no branch of the group is past its deadline")
    return decided


async def _expired(
    definition: SagaDefinition, instance: InstanceRow, claimed: ClaimedSagas
) -> Transition:
    limit = f"{definition.timeout:g} s" if definition.timeout is not None else "its deadline"
    return expire(definition, instance.state, f"saga deadline passed (took longer than {limit})")


async def _drive(ctx: JobContext, claim: Claim, decide: Decide, job: str) -> BatchResult:
    topics = Topics.from_settings(ctx.settings)

    async def settle(claimed: ClaimedSagas) -> list[_Written]:
        written = []
        for instance in claimed.instances:
            # Cached after the first load; a first load uses another pooled connection.
            definition = await ctx.definitions.get(
                instance.definition_name, instance.definition_version
            )
            if definition is None:
                written.append(await _park_undriveable(claimed, instance))
                continue
            transition = await decide(definition, instance, claimed)
            if transition.ignored is not None:
                continue  # nothing to do: e.g. a compensating saga past its deadline
            signals: tuple[ConsumedSignal, ...] = ()
            if not definition.straight_line:
                transition, signals = await consume_kept_signals(
                    definition, instance.id, instance.payload, transition, claimed.kept_signal
                )
            children = await needed_children(transition, instance.payload, ctx.definitions.get)
            prepared = prepare_write(
                instance, definition, transition, topics, signals=signals, children=children
            )
            await claimed.write_transition(
                instance,
                transition.state,
                log=prepared.log,
                outbox=prepared.outbox,
                step_timeout=prepared.step_timeout,
                shape=prepared.shape,
            )
            written.append(_written(instance, definition, transition.state, prepared))
        return written

    publisher, _ = ctx.broker()
    done = await claim(ctx.batch, settle)
    counts: Counter[str] = Counter()
    for item in done:
        _count(item, job, counts)
        if item.prepared is not None:
            await publish(publisher, item.prepared)
        if tracing.tracing_on() and item.definition is not None:
            await _trace(ctx, item, item.definition, job)
    return BatchResult(len(done), counts)


async def _trace(ctx: JobContext, item: _Written, definition: SagaDefinition, job: str) -> None:
    """The spans of the attempts that timed out, and of the saga if it ended."""
    instance, before, after = item.instance, item.instance.state, item.state
    if job == STEP_TIMEOUTS.name and before.child is None and before.status.in_flight:
        for branch, attempt, started_at in _timed_out_attempts(instance):
            step = command_step(definition, before.current_step, branch)
            command_id = message_id(instance.id, before.current_step, branch, before.phase)
            attributes = tracing.attempt_attributes(
                saga_id=instance.id,
                definition=definition.name,
                definition_version=definition.version,
                step=step.name,
                step_index=before.current_step,
                journey=step.journey,
                phase=before.phase.value,
                attempt=attempt,
                message_id=command_id,
                branch=branch,
            )
            attributes["saga.outcome"] = Outcome.TIMED_OUT.value
            tracing.attempt_ended(
                saga_id=instance.id,
                message_id=command_id,
                attempt=attempt,
                step=step.name,
                started_at=started_at,
                attributes=attributes,
            )
    if not after.status.in_flight and after.status is not SagaStatus.WAITING:
        await trace_saga_end(_saga_log(ctx), definition, instance.id, after)


def _timed_out_attempts(instance: InstanceRow) -> list[tuple[int | None, int, datetime]]:
    """(branch, attempt, dispatched at) of each attempt a step timeout judged overdue."""
    state = instance.state
    if state.status is SagaStatus.WAITING:
        return []  # a wait sent no command
    if not state.branches:
        started = instance.step_started_at
        return [] if started is None else [(None, state.step_attempt, started)]
    found: list[tuple[int | None, int, datetime]] = []
    for branch in instance.overdue_branches:
        current = state.branches[branch]
        attempt = current.attempt if state.phase is Phase.EXECUTE else current.compensation_attempt
        if branch in instance.clock:
            found.append((branch, attempt, instance.clock[branch].started_at))
    return found


def _written(
    instance: InstanceRow,
    definition: SagaDefinition,
    state: InstanceState,
    prepared: PreparedWrite,
) -> _Written:
    before = instance.state
    name, journey = logged_names(
        definition, LogEntry(before.current_step, before.phase, LogStatus.ABORTED, 1)
    )
    return _Written(instance, definition.name, name, journey, state, prepared, definition)


def _count(item: _Written, job: str, counts: Counter[str]) -> None:
    before, after = item.instance.state, item.state
    # No span: the line is about the attempt that got no reply, not the command sent next.
    with saga_context(
        saga_id=item.instance.id,
        definition=item.definition_name,
        step=item.step_name,
        journey=item.journey,
        phase=before.phase.value,
        attempt=before.step_attempt,
    ):
        if job == STEP_TIMEOUTS.name and before.child is not None:
            _count_child_check(item, counts)
            return
        if job == STEP_TIMEOUTS.name:
            metrics.STEP_TIMEOUTS.labels(
                item.definition_name, item.step_name, before.phase.value
            ).inc()
        else:
            metrics.SAGAS_EXPIRED.labels(item.definition_name).inc()
        if after.status.finished:
            metrics.count_finished(item.definition_name, after.status)
        if after.status is SagaStatus.PARKED:
            counts["parked"] += 1
            alerts.saga_parked(item.instance.id, item.definition_name, after.error)
        elif (after.current_step, after.phase) == (before.current_step, before.phase):
            counts["resent"] += 1
            log.warning("step_timed_out_resent", next_attempt=after.step_attempt)
        elif after.status is SagaStatus.COMPENSATED:
            counts["compensated"] += 1
            log.warning("saga_timed_out_compensated", reason=summarize(after.error))
        else:
            counts["compensating"] += 1
            log.warning(
                "saga_timed_out_compensating",
                reason=summarize(after.error),
                next_step=after.current_step,
            )


def _count_child_check(item: _Written, counts: Counter[str]) -> None:
    before, after = item.instance.state, item.state
    if after.status is SagaStatus.PARKED:
        found = "parked"
        alerts.saga_parked(item.instance.id, item.definition_name, after.error)
    elif after != before:
        found = "end_found"
        # The child's end came from its row: a message between them was lost.
        log.warning("child_end_found_by_check", status=after.status.value)
        if after.status.finished:
            metrics.count_finished(item.definition_name, after.status)
    elif item.prepared is not None and item.prepared.sends:
        found = "asked_again"
        log.warning("child_asked_again_to_compensate")
    else:
        found = "waiting"
    counts[f"child_{found}"] += 1
    metrics.CHILD_CHECKS.labels(item.definition_name, found).inc()


async def _park_undriveable(claimed: ClaimedSagas, instance: InstanceRow) -> _Written:
    """No stored definition: nothing can decide for this saga, so a person must."""
    reason = (
        f"definition {instance.definition_name} v{instance.definition_version} is not "
        "stored; the saga cannot be driven"
    )
    state = replace(instance.state, status=SagaStatus.PARKED, error=reason)
    await claimed.write_transition(instance, state, log=[], outbox=None, step_timeout=0)
    step = f"#{instance.state.current_step}"
    return _Written(instance, instance.definition_name, step, None, state, None)


def _saga_log(ctx: JobContext) -> SagaLog:
    return ctx.saga_log or PostgresSagaLog(ctx.database)


async def step_timeouts(ctx: JobContext) -> BatchResult:
    claim = _saga_log(ctx).claim_overdue_steps
    return await _drive(ctx, claim, _timed_out, STEP_TIMEOUTS.name)


async def saga_deadlines(ctx: JobContext) -> BatchResult:
    claim = _saga_log(ctx).claim_expired_sagas
    return await _drive(ctx, claim, _expired, SAGA_DEADLINES.name)


STEP_TIMEOUTS = Job(
    name="step_timeouts",
    run=step_timeouts,
    interval=1.0,
    batch=100,
    sends=True,
    description=(
        "attempts with no reply by their deadline: sent again with the same message id "
        "while attempts remain, then the step fails and the saga compensates (or parks)"
    ),
)

SAGA_DEADLINES = Job(
    name="saga_deadlines",
    run=saga_deadlines,
    interval=5.0,
    batch=100,
    sends=True,
    description="running sagas past their definition's overall timeout are compensated",
)
