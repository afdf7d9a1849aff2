"""The faults a test plans for a run: which steps misbehave, how, and how often.

Faults name a step's *action* (or a compensation's), as the definition does, and count
across every saga the environment runs. Two kinds exist:

- in the handler: :meth:`Faults.refuse` (a business refusal, the participant answers
  *failed*) and :meth:`Faults.error` (the handler raises, the participant answers *error*
  and the coordinator retries after the step's backoff);
- on the way: :meth:`Faults.time_out` (the command never reaches the participant),
  :meth:`Faults.answer_late` (it arrives late on the test clock),
  :meth:`Faults.crash_before_reply` (the participant commits and records its reply in its
  outbox, then dies before sending it: only the outbox relay sends it, later) and
  :meth:`Faults.deliver_twice` (every message arrives twice).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

from saga.errors import StepRefused


class InjectedFault(RuntimeError):
    """What a handler raises when :meth:`Faults.error` says it should."""


class ParticipantCrashed(RuntimeError):
    """A reply's send failed because its participant "died" right after its commit."""


@dataclass(frozen=True, slots=True)
class _Lateness:
    seconds: float
    times: int | None


def _check_action(action: str) -> str:
    if not isinstance(action, str) or not action:
        raise ValueError(f"a fault names a step's action, a non-empty string; got {action!r}")
    return action


def _check_times(times: int | None, what: str) -> int | None:
    if times is not None and (not isinstance(times, int) or times < 1):
        raise ValueError(f"{what}: times must be an int >= 1 (or None for always), got {times!r}")
    return times


@dataclass
class Faults:
    """A plan of faults; each method adds one and returns the plan, so they chain::

    faults = Faults().error("award_points", times=2).refuse("authorize_coverage")
    """

    duplicate_every_message: bool = False
    _refusals: dict[str, str] = field(default_factory=dict)
    _errors: dict[str, int] = field(default_factory=dict)
    _timeouts: dict[str, int | None] = field(default_factory=dict)
    _late: dict[str, _Lateness] = field(default_factory=dict)
    _crashes: dict[str, int] = field(default_factory=dict)
    _seen: Counter[tuple[str, str]] = field(default_factory=Counter)

    def refuse(self, action: str, reason: str = "refused by the test") -> Faults:
        """Every run of ``action`` raises :class:`~saga.errors.StepRefused` with
        ``reason`` (its writes roll back; the saga compensates the steps before)."""
        if not isinstance(reason, str) or not reason:
            raise ValueError(f"refuse({action!r}): the reason must be a non-empty string")
        self._refusals[_check_action(action)] = reason
        return self

    def error(self, action: str, *, times: int = 1) -> Faults:
        """The first ``times`` runs of ``action`` raise :class:`InjectedFault` (nothing
        commits; the coordinator tries again after the step's retry backoff)."""
        self._errors[_check_action(action)] = _check_times(times, f"error({action!r})") or 1
        return self

    def time_out(self, action: str, *, times: int | None = None) -> Faults:
        """The first ``times`` deliveries of ``action``'s command are lost, so the step
        times out (None: every delivery, the participant never answers)."""
        self._timeouts[_check_action(action)] = _check_times(times, f"time_out({action!r})")
        return self

    def answer_late(self, action: str, *, seconds: float, times: int | None = None) -> Faults:
        """The first ``times`` deliveries of ``action``'s command arrive ``seconds`` late
        on the test clock (None: every delivery)."""
        if not isinstance(seconds, int | float) or not math.isfinite(seconds) or seconds <= 0:
            raise ValueError(f"answer_late({action!r}): seconds must be > 0, got {seconds!r}")
        self._late[_check_action(action)] = _Lateness(
            float(seconds), _check_times(times, f"answer_late({action!r})")
        )
        return self

    def crash_before_reply(self, action: str, *, times: int = 1) -> Faults:
        """The first ``times`` fresh replies to ``action`` are committed to the journey's
        outbox but never sent by the participant: only the relay's sweep delivers them."""
        self._crashes[_check_action(action)] = (
            _check_times(times, f"crash_before_reply({action!r})") or 1
        )
        return self

    def deliver_twice(self) -> Faults:
        """Every message (commands, replies) is delivered twice."""
        self.duplicate_every_message = True
        return self

    # What the environment asks, one event at a time. Each answer counts the event.

    def check_handler(self, action: str) -> None:
        """Raise the fault planned for this run of ``action``'s handler, if any."""
        if action in self._refusals:
            raise StepRefused(self._refusals[action])
        if self._take("error", action, self._errors.get(action, 0)):
            n = self._seen["error", action]
            raise InjectedFault(f"injected error in {action}, run {n}")

    def lose_command(self, action: str) -> bool:
        if action not in self._timeouts:
            return False
        return self._take("time_out", action, self._timeouts[action])

    def lateness(self, action: str) -> float:
        late = self._late.get(action)
        if late is None or not self._take("late", action, late.times):
            return 0.0
        return late.seconds

    def crash_replying(self, action: str) -> bool:
        return self._take("crash", action, self._crashes.get(action, 0))

    def _take(self, kind: str, action: str, times: int | None) -> bool:
        """Count one occurrence; True while it is within the first ``times``."""
        if times == 0:
            return False
        self._seen[kind, action] += 1
        return times is None or self._seen[kind, action] <= times
