"""Property: sagas mixing steps, parallel groups, waits and child sagas always end, run each
effect once, and undo exactly what may have run, latest first.

The driver plays every other party: participants answering (successes, refusals, errors,
timeouts; late, stale and duplicated), the signal API (signals early, on time, twice, for
events no wait has), the timeout worker (waits and the saga's own deadline) and child
sagas (completed, compensated, parked, aborted). It keeps early signals the way the
coordinator will, and applies one when the saga enters its wait.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import hypothesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saga.definition import (
    AwaitEvent,
    NoCompensation,
    OnTimeout,
    Parallel,
    SagaDefinition,
    Step,
    SubSaga,
)
from saga.machine import (
    ChildEnded,
    Event,
    InstanceState,
    LogEntry,
    LogStatus,
    Outcome,
    Phase,
    SagaStatus,
    SignalEvent,
    SignalVerdict,
    StepEvent,
    Transition,
    WaitExpired,
    advance,
    begin,
    expire,
    judge_signal,
)
from saga.machine_state import BranchOutcome
from saga.retry import RetryPolicy
from saga.shapes import Position, resolve_reference

EXECUTE, COMPENSATE = Phase.EXECUTE, Phase.COMPENSATE
PAYLOAD = {"user": "u-1"}
REFUSED = "refused"
_NOT_REFUSALS = ("out of attempts", "not retried, the group is failing")
Unit = tuple[int, int | None]
"""A thing that can run and be undone: (position, branch), branch None for a step or child."""


def _step(name: str, draw: st.DrawFn, *, final: bool = False) -> Step:
    return Step(
        name=name,
        journey="care",
        action=f"do_{name}",
        compensation=None if final else f"undo_{name}",
        no_compensation=NoCompensation.LAST if final else None,
        retry=RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.01),
        compensation_retry=RetryPolicy(max_attempts=draw(st.integers(1, 3)), initial_delay=0.01),
    )


@st.composite
def shaped_definitions(draw: st.DrawFn) -> SagaDefinition:
    count = draw(st.integers(1, 5))
    positions: list[Position] = []
    for index in range(count):
        kind = draw(st.sampled_from(["step", "group", "wait", "child"]))
        name = f"p{index}"
        if kind == "step":
            positions.append(_step(name, draw))
        elif kind == "group":
            branches = [_step(f"{name}b{b}", draw) for b in range(draw(st.integers(2, 3)))]
            positions.append(Parallel(name, branches))
        elif kind == "wait":
            flag = draw(st.none() | st.integers(0, count).map(lambda j: f"context.flag_{j}"))
            on_timeout = draw(st.sampled_from(list(OnTimeout)))
            positions.append(AwaitEvent(name, f"e{index}", 60.0, on_timeout=on_timeout, when=flag))
        else:
            payload = {"user": "payload.user"}
            if draw(st.booleans()):
                payload["flag"] = f"context.flag_{draw(st.integers(0, count))}"
            positions.append(SubSaga(name, ("child", 1), payload=payload))
    ending = draw(st.sampled_from(["none", "last-step", "last-group"]))
    if ending == "last-step":
        positions.append(_step(f"p{count}", draw, final=True))
    elif ending == "last-group":
        branches = [_step(f"p{count}b0", draw), _step(f"p{count}b1", draw, final=True)]
        positions.append(Parallel(f"p{count}", branches))
    return SagaDefinition("shaped", 1, positions).validate()


# --- an independent statement of which events apply --------------------------------------------


def _attempt_ok(current: int, event: StepEvent, settled: tuple[Outcome, ...]) -> bool:
    return event.attempt == current or (event.attempt < current and event.outcome in settled)


def _settled(phase: Phase) -> tuple[Outcome, ...]:
    return (Outcome.SUCCEEDED, Outcome.FAILED) if phase is EXECUTE else (Outcome.SUCCEEDED,)


def applies(definition: SagaDefinition, state: InstanceState, event: Event) -> bool:
    """The model: which events change the saga (everything else is ignored)."""
    if isinstance(event, SignalEvent):
        return state.status is SagaStatus.WAITING and state.waiting_for == event.event
    if isinstance(event, WaitExpired):
        return state.status is SagaStatus.WAITING and event.step_index == state.current_step
    if not state.status.in_flight or event.step_index != state.current_step:
        return False
    position = definition.positions[event.step_index]
    if isinstance(event, ChildEnded):
        link = state.child
        if link is None or event.attempt != link.attempt:
            return False
        ends = {SagaStatus.COMPENSATED, SagaStatus.ABORTED}
        if link.phase is EXECUTE:
            ends.add(SagaStatus.COMPLETED)
        return event.status in ends
    if isinstance(position, Step):
        return (
            event.branch is None
            and event.phase is state.phase
            and _attempt_ok(state.step_attempt, event, _settled(event.phase))
        )
    if not isinstance(position, Parallel) or event.branch is None:
        return False
    if not 0 <= event.branch < len(position.branches):
        return False
    branch = state.branches[event.branch]
    compensating = state.status is SagaStatus.COMPENSATING
    if event.phase is EXECUTE and not compensating:
        return branch.outcome is BranchOutcome.PENDING and _attempt_ok(
            branch.attempt, event, _settled(EXECUTE)
        )
    if event.phase is EXECUTE:
        return branch.outcome is BranchOutcome.UNKNOWN and event.outcome is Outcome.SUCCEEDED
    return (
        compensating
        and branch.compensation is BranchOutcome.PENDING
        and _attempt_ok(branch.compensation_attempt, event, _settled(COMPENSATE))
    )


def answers(definition: SagaDefinition, state: InstanceState) -> list[tuple[Any, ...]]:
    """What the other parties may answer now: (kind, position, branch, phase, attempt)."""
    index = state.current_step
    if state.status is SagaStatus.WAITING:
        return [("wait", index, None, EXECUTE, state.step_attempt)]
    if not state.status.in_flight:
        return []
    if state.child is not None:
        return [("child", index, None, state.child.phase, state.child.attempt)]
    if not state.branches:
        return [("step", index, None, state.phase, state.step_attempt)]
    found = []
    for number, branch in enumerate(state.branches):
        if state.status is SagaStatus.RUNNING and branch.outcome is BranchOutcome.PENDING:
            found.append(("branch", index, number, EXECUTE, branch.attempt))
        if branch.compensation is BranchOutcome.PENDING:
            found.append(("branch", index, number, COMPENSATE, branch.compensation_attempt))
    return found


# --- what a run saw ---------------------------------------------------------------------------


@dataclass
class Run:
    definition: SagaDefinition
    transitions: list[Transition] = field(default_factory=list)
    applied: list[Event] = field(default_factory=list)
    kept: dict[str, SignalEvent] = field(default_factory=dict)
    sent_signals: int = 0

    @property
    def log(self) -> list[LogEntry]:
        return [entry for transition in self.transitions for entry in transition.log]

    def record(self, transition: Transition) -> None:
        assert transition.changed
        self.transitions.append(transition)
        self.check_transition(transition)

    def check_transition(self, transition: Transition) -> None:
        state = transition.state
        for dispatch in transition.dispatches:
            entry = LogEntry(
                dispatch.step_index,
                dispatch.phase,
                LogStatus.DISPATCHED,
                dispatch.attempt,
                branch=dispatch.branch,
            )
            assert entry in transition.log
            step = self.step_of(dispatch.step_index, dispatch.branch)
            policy = step.retry if dispatch.phase is EXECUTE else step.compensation_retry
            assert 1 <= dispatch.attempt <= policy.max_attempts
            assert 0 <= dispatch.delay <= policy.max_delay
        # A wait is skipped exactly when its flag is there and falsy.
        for entry in transition.log:
            position = self.definition.positions[entry.step_index]
            if not isinstance(position, AwaitEvent) or position.when is None:
                continue
            found, flag = resolve_reference(position.when, PAYLOAD, state.context)
            if entry.status is LogStatus.SKIPPED:
                assert found
                assert not flag
            if entry.status is LogStatus.WAITING:
                assert not found or flag
        if state.status is SagaStatus.WAITING:
            assert transition.wait is not None
            assert transition.wait.event == state.waiting_for
            assert not transition.dispatches
        if state.status.in_flight:
            assert answers(self.definition, state), "an in-flight saga must await something"

    def step_of(self, index: int, branch: int | None) -> Step:
        position = self.definition.positions[index]
        if isinstance(position, Parallel):
            assert branch is not None
            return position.branches[branch]
        assert isinstance(position, Step)
        return position


def _reply(data: st.DataObject, answer: tuple[Any, ...]) -> Event:
    kind, index, branch, phase, attempt = answer
    if kind == "wait":
        return WaitExpired(index)  # signals are sent apart
    if kind == "child":
        weights = [SagaStatus.COMPLETED] * 4 if phase is EXECUTE else [SagaStatus.COMPENSATED] * 4
        status = data.draw(
            st.sampled_from(
                [*weights, SagaStatus.COMPENSATED, SagaStatus.PARKED, SagaStatus.ABORTED]
            )
        )
        return ChildEnded(index, attempt, status, {"child": index}, error="child said no")
    outcome = data.draw(st.sampled_from([Outcome.SUCCEEDED] * 4 + [o for o in Outcome][1:]))
    result: dict[str, Any] = {"last": index}
    if branch is None:
        result[f"flag_{index}"] = data.draw(st.booleans())
    else:
        result["attempt"] = attempt
    reason = REFUSED if outcome is Outcome.FAILED else outcome.value
    attempt = data.draw(st.sampled_from([attempt, attempt, max(1, attempt - 1)]))
    return StepEvent(index, phase, attempt, outcome, result, reason, branch)


def _random_event(data: st.DataObject, definition: SagaDefinition) -> Event:
    count = len(definition.positions)
    kind = data.draw(st.sampled_from(["step", "child", "wait"]))
    index = data.draw(st.integers(-1, count))
    if kind == "child":
        return ChildEnded(
            index, data.draw(st.integers(0, 2)), data.draw(st.sampled_from(list(SagaStatus)))
        )
    if kind == "wait":
        return WaitExpired(index)
    return StepEvent(
        index,
        data.draw(st.sampled_from(list(Phase))),
        data.draw(st.integers(0, 4)),
        data.draw(st.sampled_from(list(Outcome))),
        branch=data.draw(st.none() | st.integers(-1, 3)),
    )


MAX_INJECTED = 25
MAX_STEPS = 400


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(definition=shaped_definitions(), data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_shaped_runs_end_and_undo_exactly_what_may_have_run(
    definition: SagaDefinition, data: st.DataObject, seed: int
) -> None:
    rng = random.Random(seed)
    run = Run(definition)
    transition = begin(definition, payload=PAYLOAD)
    run.record(transition)
    state = transition.state
    injected = 0
    events = sorted({p.event for p in definition.positions if isinstance(p, AwaitEvent)})

    def apply(event: Event) -> None:
        nonlocal state, transition
        nxt = advance(definition, state, event, rng=rng, payload=PAYLOAD)
        expected = applies(definition, state, event)
        assert nxt.changed == expected, (event, state, nxt.ignored)
        if not nxt.changed:
            assert nxt.state is state
            assert not nxt.log
            assert not nxt.dispatches
            return
        run.applied.append(event)
        run.record(nxt)
        transition, state = nxt, nxt.state
        # A signal kept from before the wait is consumed as the saga enters it.
        if nxt.wait is not None and nxt.wait.event in run.kept:
            apply(run.kept.pop(nxt.wait.event))

    def signal(event: str) -> None:
        run.sent_signals += 1
        sent = SignalEvent(
            event, {"by": "auditor", "n": run.sent_signals}, f"sig-{run.sent_signals}"
        )
        verdict, why = judge_signal(definition, state, event)
        assert why
        if verdict is SignalVerdict.REFUSE:
            assert state.status.finished or event not in events
            assert not advance(definition, state, sent, payload=PAYLOAD).changed
        elif verdict is SignalVerdict.KEEP:
            assert not advance(definition, state, sent, payload=PAYLOAD).changed
            run.kept.setdefault(event, sent)
        else:
            apply(sent)
            assert sent.signal_id in {t.consumed_signal for t in run.transitions}

    for _ in range(MAX_STEPS):
        if state.status not in (SagaStatus.RUNNING, SagaStatus.COMPENSATING, SagaStatus.WAITING):
            break
        kind = "answer"
        if injected < MAX_INJECTED:
            kind = data.draw(
                st.sampled_from(["answer"] * 3 + ["signal", "duplicate", "random", "expire"])
            )
            injected += kind != "answer"
        if kind == "signal":
            signal(data.draw(st.sampled_from([*events, "never_awaited"])))
        elif kind == "duplicate" and run.applied:
            duplicate = data.draw(st.sampled_from(run.applied))
            if isinstance(duplicate, SignalEvent):
                assert not advance(definition, state, duplicate, payload=PAYLOAD).changed
            else:
                apply(duplicate)
        elif kind == "random":
            apply(_random_event(data, definition))
        elif kind == "expire":
            nxt = expire(definition, state, "deadline")
            if state.status not in (SagaStatus.RUNNING, SagaStatus.WAITING):
                assert not nxt.changed
            else:
                run.record(nxt)
                transition, state = nxt, nxt.state
        else:
            pending = answers(definition, state)
            answer = data.draw(st.sampled_from(pending))
            if answer[0] == "wait" and data.draw(st.booleans()):
                signal(state.waiting_for or "")
            else:
                apply(_reply(data, answer))

    hypothesis.event(f"ended {state.status.value}")
    assert state.status in (SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.PARKED)
    for late in run.applied:
        assert not advance(definition, state, late, payload=PAYLOAD).changed
    assert not expire(definition, state, "deadline").changed
    check_the_log(definition, run, state)


def check_the_log(definition: SagaDefinition, run: Run, state: InstanceState) -> None:
    log = run.log
    executed = [e for e in log if e.phase is EXECUTE]
    compensated = [e for e in log if e.phase is COMPENSATE]

    # Each effect once: a unit succeeds at most once, is undone at most once.
    succeeded = Counter(
        (e.step_index, e.branch) for e in executed if e.status is LogStatus.SUCCEEDED
    )
    undone = Counter(
        (e.step_index, e.branch) for e in compensated if e.status is LogStatus.SUCCEEDED
    )
    assert all(n == 1 for n in succeeded.values())
    assert all(n == 1 for n in undone.values())
    assert all(t.start_child is None or t.start_child.attempt == 1 for t in run.transitions)
    starts = Counter(t.start_child.step_index for t in run.transitions if t.start_child)
    assert all(n == 1 for n in starts.values())
    consumed = [t.consumed_signal for t in run.transitions if t.consumed_signal]
    assert len(consumed) == len(set(consumed))

    # The context: flat merges of plain steps, the shapes' results under their names.
    merged: dict[str, Any] = {}
    for entry in executed:
        if entry.status is not LogStatus.SUCCEEDED:
            continue
        assert entry.response is not None
        position = definition.positions[entry.step_index]
        if isinstance(position, Step):
            merged.update(entry.response)
        elif isinstance(position, Parallel):
            assert entry.branch is not None
            merged[position.branches[entry.branch].name] = dict(entry.response)
        else:
            merged[position.name] = dict(entry.response)
    assert state.context == merged

    # A failing group starts nothing new: no branch is (re)tried after a sibling failed.
    failed_groups: set[int] = set()
    for entry in executed:
        if entry.step_index in failed_groups:
            assert entry.status is not LogStatus.DISPATCHED
        if entry.branch is not None and entry.status is LogStatus.FAILED:
            failed_groups.add(entry.step_index)

    # Nothing starts once undoing has.
    undoing = [i for i, t in enumerate(run.transitions) if _asks_undo(t)]
    if undoing:
        for t in run.transitions[undoing[0] :]:
            assert t.start_child is None
            assert all(d.phase is COMPENSATE for d in t.dispatches)

    # Undone latest first: positions in decreasing order, a group's branches together,
    # each position only after everything later was undone.
    asked: list[tuple[int, set[int | None]]] = []
    for t in run.transitions:
        first = {
            (d.step_index, d.branch)
            for d in t.dispatches
            if d.attempt == 1 and d.phase is COMPENSATE
        }
        if t.compensate_child is not None:
            first.add((t.compensate_child.step_index, None))
        if first:
            (index,) = {i for i, _ in first}
            asked.append((index, {b for _, b in first}))
    assert [i for i, _ in asked] == sorted((i for i, _ in asked), reverse=True)
    assert len({i for i, _ in asked}) == len(asked)

    may_have_run = _may_have_run(definition, log)
    undone_units = set(undone)
    assert undone_units <= may_have_run
    if state.status is SagaStatus.COMPENSATED:
        assert state.error
        assert undone_units == may_have_run
    elif state.status is SagaStatus.COMPLETED:
        assert not undoing
        assert state.error is None
        assert not state.branches
        assert state.child is None
        assert state.waiting_for is None
    else:
        assert state.error


def _asks_undo(transition: Transition) -> bool:
    return transition.compensate_child is not None or any(
        d.phase is COMPENSATE for d in transition.dispatches
    )


def _may_have_run(definition: SagaDefinition, log: list[LogEntry]) -> set[Unit]:
    """Units whose command went out and did not come back refused (or whose child did not
    undo itself), and that can be undone."""
    last: dict[Unit, LogEntry] = {}
    for entry in log:
        if entry.phase is not EXECUTE:
            continue
        if entry.status is LogStatus.ABORTED:
            continue  # the saga's deadline: says nothing of the unit itself
        last[(entry.step_index, entry.branch)] = entry
    units: set[Unit] = set()
    for (index, branch), entry in last.items():
        position = definition.positions[index]
        if isinstance(position, AwaitEvent) or (isinstance(position, Parallel) and branch is None):
            continue
        if isinstance(position, SubSaga):
            started = entry.status is LogStatus.SUCCEEDED or (entry.status is LogStatus.DISPATCHED)
            if started:
                units.add((index, None))
            continue
        step = (
            position.branches[branch]
            if isinstance(position, Parallel) and branch is not None
            else position
        )
        assert isinstance(step, Step)
        # A failure the machine decided (attempts spent, a failing group's erring branch) may
        # have committed; any other failure is the participant's refusal, whatever its reason.
        refused = entry.status is LogStatus.FAILED and not (entry.error or "").startswith(
            _NOT_REFUSALS
        )
        if step.compensatable and not refused:
            units.add((index, branch))
    return units
