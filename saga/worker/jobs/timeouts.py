"""Sagas no reply will move: attempts past their deadline and sagas past theirs.

A step (or compensation) attempt with no reply by its deadline counts as timed out: the
state machine sends it again with the same message id while attempts remain (the
participant answers a repeat from its inbox, so nothing runs twice), then fails the step
and compensates. A running saga past its overall deadline is compensated from the step it
is at. Each batch claims its sagas through the saga log port
(:meth:`~saga.store.port.SagaLog.claim_overdue_steps`: on PostgreSQL ``FOR UPDATE SKIP
LOCKED``) and writes every transition under that claim, so two workers never judge the
same saga, and a coordinator applying a reply at that moment waits for the lock, then
finds the version moved and re-reads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

import structlog

from saga import alerts, metrics
from saga.coordinator.commands import PreparedWrite, prepare_write
from saga.definition import SagaDefinition
from saga.logging import saga_context
from saga.machine import (
    InstanceState,
    Outcome,
    SagaStatus,
    StepEvent,
    Transition,
    advance,
    expire,
)
from saga.masking import summarize
from saga.store.outbox import PendingMessage
from saga.store.port import ClaimedSagas, SagaLog, SettleClaimed
from saga.store.postgres_log import PostgresSagaLog
from saga.store.records import InstanceRow
from saga.transport import Topics
from saga.worker.job import BatchResult, Job, JobContext

log = structlog.get_logger("saga.worker")

Decide = Callable[[SagaDefinition, InstanceRow], Transition]
Claim = Callable[[int, SettleClaimed["list[_Written]"]], Awaitable["list[_Written]"]]


@dataclass(frozen=True, slots=True)
class _Written:
    instance: InstanceRow
    definition_name: str
    step_name: str
    journey: str | None
    state: InstanceState
    pending: PendingMessage | None
    delay: float


def _timed_out(definition: SagaDefinition, instance: InstanceRow) -> Transition:
    state = instance.state
    step = definition.steps[state.current_step]
    event = StepEvent(
        state.current_step,
        state.phase,
        state.step_attempt,
        Outcome.TIMED_OUT,
        reason=f"no reply within {step.timeout:g} s",
    )
    return advance(definition, state, event)


def _expired(definition: SagaDefinition, instance: InstanceRow) -> Transition:
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
            transition = decide(definition, instance)
            if transition.ignored is not None:
                continue  # nothing to do: e.g. a compensating saga past its deadline
            prepared = prepare_write(instance, definition, transition, topics)
            await claimed.write_transition(
                instance,
                transition.state,
                log=prepared.log,
                outbox=prepared.outbox,
                step_timeout=prepared.step_timeout,
            )
            written.append(_written(instance, definition, transition.state, prepared))
        return written

    done = await claim(ctx.batch, settle)
    counts: Counter[str] = Counter()
    for item in done:
        _count(item, job, counts)
        if item.pending is not None:
            if item.delay > 0:
                ctx.publisher.publish_later(item.pending, item.delay)
            else:
                await ctx.publisher.publish([item.pending])
    return BatchResult(len(done), counts)


def _written(
    instance: InstanceRow,
    definition: SagaDefinition,
    state: InstanceState,
    prepared: PreparedWrite,
) -> _Written:
    step = definition.steps[instance.state.current_step]
    return _Written(
        instance, definition.name, step.name, step.journey, state, prepared.pending, prepared.delay
    )


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


async def _park_undriveable(claimed: ClaimedSagas, instance: InstanceRow) -> _Written:
    """No stored definition: nothing can decide for this saga, so a person must."""
    reason = (
        f"definition {instance.definition_name} v{instance.definition_version} is not "
        "stored; the saga cannot be driven"
    )
    state = replace(instance.state, status=SagaStatus.PARKED, error=reason)
    await claimed.write_transition(instance, state, log=[], outbox=None, step_timeout=0)
    step = f"#{instance.state.current_step}"
    return _Written(instance, instance.definition_name, step, None, state, None, 0.0)


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
    description="running sagas past their definition's overall timeout are compensated",
)
