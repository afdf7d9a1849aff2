"""The data the state machine (:mod:`saga.machine`) reads and decides: an instance's state,
the events that reach it, and the transitions it answers with. Plain data throughout:
everything an instance carries can be stored as JSON (:meth:`InstanceState.to_document`).

The fields the shapes added (a parallel group's branches, the event a saga waits for, the
link to a child saga) are empty by default, so a straight-line saga's state is what it
always was, and it is decided exactly as before.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from saga.errors import UsageError


class SagaStatus(StrEnum):
    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    PARKED = "parked"
    ABORTED = "aborted"
    """An operator stopped the saga (``saga abort``) and took over: nothing drives or
    compensates it any more."""
    WAITING = "waiting"
    """Paused at an :class:`~saga.shapes.AwaitEvent` until its signal or its timeout; no
    command is out."""

    @property
    def finished(self) -> bool:
        return self in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.ABORTED)

    @property
    def in_flight(self) -> bool:
        """A command (or a child saga) is out and its answer is awaited."""
        return self in (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


class Phase(StrEnum):
    EXECUTE = "execute"
    COMPENSATE = "compensate"


class Outcome(StrEnum):
    """What became of one attempt of a step's command."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """The participant refused for a business reason and committed nothing."""
    ERROR = "error"
    """The participant could not run it (a fault); nothing committed; worth another try."""
    TIMED_OUT = "timed_out"
    """No reply before the deadline; the command may still be applied later."""


class LogStatus(StrEnum):
    """``shared.saga_step_log.status``."""

    DISPATCHED = "dispatched"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    IGNORED = "ignored"
    SKIPPED = "skipped"
    RETRIED = "retried"
    ABORTED = "aborted"
    WAITING = "waiting"
    """The saga reached a wait and paused for its signal."""


class BranchOutcome(StrEnum):
    """Where one branch of a parallel group (or its compensation) stands."""

    PENDING = "pending"
    """Its command is out; no settled answer yet."""
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    """Refused: it committed nothing, so there is nothing to undo."""
    UNKNOWN = "unknown"
    """Out of attempts (or abandoned when the group failed or the saga expired): a late
    delivery may still commit it, so it is compensated like a success."""


@dataclass(frozen=True, slots=True)
class BranchState:
    """One branch of the parallel group the saga is at."""

    attempt: int = 1
    outcome: BranchOutcome = BranchOutcome.PENDING
    compensation_attempt: int = 0
    """0 while the branch is not being compensated."""
    compensation: BranchOutcome | None = None
    """``None``: not to be undone; ``PENDING``: its compensation is out; ``SUCCEEDED``: undone."""

    @property
    def may_have_committed(self) -> bool:
        return self.outcome in (BranchOutcome.SUCCEEDED, BranchOutcome.UNKNOWN)

    def to_document(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "outcome": self.outcome.value,
            "compensation_attempt": self.compensation_attempt,
            "compensation": None if self.compensation is None else self.compensation.value,
        }

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> BranchState:
        compensation = document["compensation"]
        return cls(
            attempt=int(document["attempt"]),
            outcome=BranchOutcome(document["outcome"]),
            compensation_attempt=int(document["compensation_attempt"]),
            compensation=None if compensation is None else BranchOutcome(compensation),
        )


@dataclass(frozen=True, slots=True)
class ChildLink:
    """The child saga the parent's current position started, and what it awaits of it:
    its end (``EXECUTE``) or the end of its compensation (``COMPENSATE``)."""

    attempt: int
    phase: Phase

    def to_document(self) -> dict[str, Any]:
        return {"attempt": self.attempt, "phase": self.phase.value}

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> ChildLink:
        return cls(int(document["attempt"]), Phase(document["phase"]))


@dataclass(frozen=True, slots=True)
class InstanceState:
    status: SagaStatus
    current_step: int
    """The position the saga is at (a step, a group, a wait or a child saga)."""
    step_attempt: int
    context: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None
    """Why the saga compensates or parked; while a parallel group is failing (running,
    awaiting its branches still in flight) it already says why."""
    branches: tuple[BranchState, ...] = ()
    """Per branch of the parallel group at ``current_step``; empty elsewhere."""
    waiting_for: str | None = None
    """The event the saga waits for (status ``WAITING``)."""
    child: ChildLink | None = None
    """The child saga of the :class:`~saga.shapes.SubSaga` at ``current_step``."""
    child_attempts: Mapping[int, int] = field(default_factory=dict)
    """Per ``SubSaga`` position passed whose child is not attempt 1's: the attempt whose
    child completed it (an operator started it again), so undoing the position asks that
    child; ``0`` when an operator skipped the position (there is no child to ask). Empty
    unless an operator acted on a child position."""

    @property
    def phase(self) -> Phase:
        return Phase.COMPENSATE if self.status is SagaStatus.COMPENSATING else Phase.EXECUTE

    def to_document(self) -> dict[str, Any]:
        """The state as JSON-ready data; the shapes' fields only when set."""
        document: dict[str, Any] = {
            "status": self.status.value,
            "current_step": self.current_step,
            "step_attempt": self.step_attempt,
            "context": dict(self.context),
            "error": self.error,
        }
        if self.branches:
            document["branches"] = [branch.to_document() for branch in self.branches]
        if self.waiting_for is not None:
            document["waiting_for"] = self.waiting_for
        if self.child is not None:
            document["child"] = self.child.to_document()
        if self.child_attempts:
            # JSON object keys are text.
            document["child_attempts"] = {str(k): v for k, v in self.child_attempts.items()}
        return document

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> InstanceState:
        child = document.get("child")
        return cls(
            SagaStatus(document["status"]),
            int(document["current_step"]),
            int(document["step_attempt"]),
            dict(document.get("context") or {}),
            document.get("error"),
            branches=tuple(BranchState.from_document(b) for b in document.get("branches", ())),
            waiting_for=document.get("waiting_for"),
            child=None if child is None else ChildLink.from_document(child),
            child_attempts={
                int(k): int(v) for k, v in (document.get("child_attempts") or {}).items()
            },
        )


# --- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StepEvent:
    """A participant's reply (or a timeout) for one attempt of one step's command; for a
    parallel group's branch, ``branch`` says which."""

    step_index: int
    phase: Phase
    attempt: int
    outcome: Outcome
    result: Mapping[str, Any] = field(default_factory=dict)
    reason: str | None = None
    branch: int | None = None


@dataclass(frozen=True, slots=True)
class SignalEvent:
    """A signal (``Coordinator.signal``): applied only while the saga waits for ``event``."""

    event: str
    payload: Mapping[str, Any]
    signal_id: str


@dataclass(frozen=True, slots=True)
class WaitExpired:
    """The wait at ``step_index`` had no signal before its timeout."""

    step_index: int


@dataclass(frozen=True, slots=True)
class ChildEnded:
    """The child saga of the position at ``step_index`` changed status. Only completed,
    compensated and aborted are ends; a parked child leaves the parent waiting on it."""

    step_index: int
    attempt: int
    status: SagaStatus
    context: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


Event = StepEvent | SignalEvent | WaitExpired | ChildEnded


# --- what a transition asks for ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    step_index: int
    phase: Phase
    status: LogStatus
    attempt: int
    response: Mapping[str, Any] | None = None
    error: str | None = None
    branch: int | None = None


@dataclass(frozen=True, slots=True)
class Dispatch:
    """Send this step's (or branch's) command, the same message id on every attempt,
    after ``delay`` s."""

    step_index: int
    phase: Phase
    attempt: int
    delay: float = 0.0
    branch: int | None = None


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start the child saga of the :class:`~saga.shapes.SubSaga` at ``step_index``
    (idempotently: see :func:`saga.machine.child_idempotency_key`)."""

    step_index: int
    attempt: int
    definition: tuple[str, int]
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class CompensateChild:
    """Ask the child saga of the position at ``step_index`` to undo its steps."""

    step_index: int
    attempt: int


@dataclass(frozen=True, slots=True)
class EnterWait:
    """The saga now waits for ``event``; the coordinator sets the deadline ``timeout`` s
    from now, and consumes a signal for ``event`` it kept from before, if any."""

    step_index: int
    event: str
    timeout: float


@dataclass(frozen=True, slots=True)
class Transition:
    state: InstanceState
    log: tuple[LogEntry, ...] = ()
    dispatches: tuple[Dispatch, ...] = ()
    """The commands to send: one, or one per branch of a parallel group."""
    ignored: str | None = None
    """Set when the event changed nothing; says why (stale attempt, step already past)."""
    start_child: StartChild | None = None
    compensate_child: CompensateChild | None = None
    wait: EnterWait | None = None
    consumed_signal: str | None = None
    """The id of the signal this transition consumed (mark it so in the same commit)."""

    @property
    def changed(self) -> bool:
        return self.ignored is None

    @property
    def dispatch(self) -> Dispatch | None:
        """The one command to send, for callers that send one at a time."""
        if len(self.dispatches) > 1:
            raise UsageError(
                f"this transition sends {len(self.dispatches)} commands (a parallel group's "
                "branches); read Transition.dispatches"
            )
        return self.dispatches[0] if self.dispatches else None


class SignalVerdict(StrEnum):
    """What the coordinator does with a signal (:func:`saga.machine.judge_signal`)."""

    ACCEPT = "accept"
    """The saga waits for it now: store it and apply it in the same transaction."""
    KEEP = "keep"
    """The saga may still reach a wait for it: store it; the wait consumes it."""
    REFUSE = "refuse"
    """The saga is finished, or never waits for that event: refuse it, saying why."""
