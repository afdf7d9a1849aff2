"""What a reliability run found: the sagas' ends, the faults injected, what was
dead-lettered, what the invariant check says about the effects, and how long the system
took to drain once the faults stopped."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Report:
    settings: dict[str, Any]
    sagas: int
    """Sagas started."""
    by_status: dict[str, int]
    parked_reasons: dict[str, int]
    """Each distinct reason a saga was parked for, with how many."""
    faults: dict[str, int]
    """Faults injected, by kind."""
    dead_letters: dict[str, int]
    """Records the dead-letter topic received, by reason kind."""
    effects: dict[str, int]
    """``lost``, ``duplicated``, ``not undone``, ``wrong`` (journeys.invariants)."""
    violations: list[str]
    """Every invariant violation (effects included), as the check words them."""
    unfinished: int
    """Sagas still running or compensating when the drain gave up: lost work."""
    crashes: dict[str, int] = field(default_factory=dict)
    """Processes that died without being killed, by name: each a bug."""
    load_seconds: float = 0.0
    drain_seconds: float | None = None
    """From the last fault to the last saga finishing (None: it never drained)."""
    total_seconds: float = 0.0
    evidence: dict[str, int] = field(default_factory=dict)
    """What the faults caused in the engine, read from its logs and metrics (e.g. pool
    timeouts, serialization retries), to show they bit."""

    @property
    def lost(self) -> int:
        return self.effects.get("lost", 0)

    @property
    def duplicated(self) -> int:
        return self.effects.get("duplicated", 0)

    @property
    def passed(self) -> bool:
        return (
            not self.violations
            and self.unfinished == 0
            and not self.crashes
            and self.drain_seconds is not None
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lost": self.lost, "duplicated": self.duplicated}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)

    def render(self) -> str:
        """The report as an operator reads it."""
        finished = sum(self.by_status.get(s, 0) for s in ("completed", "compensated"))
        lines = [
            f"reliability run: {self.sagas} sagas, seed {self.settings.get('seed')}, "
            f"{self.load_seconds:.1f} s of load, {self.total_seconds:.1f} s in all",
            f"  completed {self.by_status.get('completed', 0)}, "
            f"compensated {self.by_status.get('compensated', 0)}, "
            f"parked {self.by_status.get('parked', 0)}, "
            f"still running {self.unfinished} ({finished} finished)",
        ]
        for reason, count in sorted(self.parked_reasons.items(), key=lambda item: -item[1]):
            lines.append(f"    parked x{count}: {reason}")
        lines.append("  faults injected: " + _counts(self.faults))
        lines.append("  dead-lettered: " + _counts(self.dead_letters))
        if self.evidence:
            lines.append("  what the faults caused: " + _counts(self.evidence))
        lines.append(
            f"  effects lost {self.lost}, duplicated {self.duplicated}, "
            f"not undone {self.effects.get('not undone', 0)}, wrong {self.effects.get('wrong', 0)}"
        )
        lines.append(
            "  drained "
            + (
                f"{self.drain_seconds:.1f} s after the last fault"
                if self.drain_seconds is not None
                else "NEVER"
            )
        )
        if self.crashes:
            lines.append("  processes that died on their own: " + _counts(self.crashes))
        others = [v for v in self.violations if not v.startswith("[effects]")]
        lines.append(f"  invariant violations: {len(self.violations)}")
        lines += [f"    {v}" for v in others[:20]]
        lines.append("  PASSED" if self.passed else "  FAILED")
        return "\n".join(lines)


def _counts(counts: dict[str, int] | Counter[str]) -> str:
    if not counts:
        return "none"
    total = sum(counts.values())
    return f"{total} (" + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ")"
