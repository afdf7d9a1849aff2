"""Signals: what a saga waiting at an :class:`~saga.shapes.AwaitEvent` waits for.

:meth:`Coordinator.signal <saga.coordinator.service.Coordinator.signal>` stores a signal
and, in the same transaction, applies it when the saga waits for it now, or keeps it for
the wait the saga has yet to reach. Whatever transition enters a wait (a reply, a
timeout, a signal, a start) first looks for a signal kept for that wait's event and
applies it in the same write (:func:`consume_kept_signals`), so a signal that came early
is never left behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from saga.coordinator.commands import ConsumedSignal
from saga.definition import SagaDefinition
from saga.machine import SagaStatus, SignalEvent, Transition, advance
from saga.store.records import StoredSignal

KeptSignalLookup = Callable[[uuid.UUID, str, Sequence[str]], Awaitable[StoredSignal | None]]
"""``(saga_id, event, ids already applied)`` → the oldest kept signal for ``event``."""


class SignalOutcome(StrEnum):
    ACCEPTED = "accepted"
    """The saga was waiting for it: it moved on in the same transaction."""
    KEPT = "kept"
    """The saga has not reached its wait yet: stored, and applied when it does."""


@dataclass(frozen=True, slots=True)
class SignalReceipt:
    """What :meth:`Coordinator.signal` did with a signal. For a signal id sent before
    (``repeated``), how that first signal stands now: accepted once it was applied."""

    saga_id: uuid.UUID
    event: str
    signal_id: str
    outcome: SignalOutcome
    repeated: bool = False
    status: SagaStatus | None = None
    """The saga's status after an accepted signal (None for a kept or repeated one)."""


async def consume_kept_signals(
    definition: SagaDefinition,
    saga_id: uuid.UUID,
    payload: Mapping[str, Any],
    transition: Transition,
    kept: KeptSignalLookup,
) -> tuple[Transition, tuple[ConsumedSignal, ...]]:
    """``transition``, carried on through every wait it enters for which a signal was
    kept: one transition, written at once, with the signals it applied."""
    consumed: list[ConsumedSignal] = []
    while transition.wait is not None and transition.state.status is SagaStatus.WAITING:
        event = transition.wait.event
        signal = await kept(saga_id, event, [c.signal_id for c in consumed])
        if signal is None:
            break
        applied = advance(
            definition,
            transition.state,
            SignalEvent(event, signal.payload, signal.signal_id),
            payload=payload,
        )
        if applied.ignored is not None:
            break
        consumed.append(
            ConsumedSignal(transition.state.current_step, signal.signal_id, signal.actor)
        )
        transition = chain(transition, applied)
    return transition, tuple(consumed)


def chain(first: Transition, then: Transition) -> Transition:
    """Two transitions made one: ``then`` was decided on ``first``'s state."""
    return Transition(
        then.state,
        first.log + then.log,
        first.dispatches + then.dispatches,
        None,
        then.start_child or first.start_child,
        then.compensate_child or first.compensate_child,
        then.wait,
        then.consumed_signal or first.consumed_signal,
    )
