"""Retry policies: validated, immutable, and free of I/O so the state machine can use them."""

from __future__ import annotations

import random
from dataclasses import dataclass

from saga.errors import PolicyError


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """How often, and how far apart, a failed unit of work is tried again.

    Delays grow as ``initial_delay * multiplier ** (attempt - 1)``, capped at ``max_delay``,
    and each is drawn uniformly from ``[delay * (1 - jitter), delay]`` so that clients that
    collided once do not collide again in lockstep.
    """

    max_attempts: int = 5
    """Total tries including the first; 1 means never retry."""

    initial_delay: float = 0.005
    """Seconds to wait before the second try."""

    multiplier: float = 2.0
    """Factor by which each wait grows."""

    max_delay: float = 1.0
    """Seconds; no wait is longer than this."""

    jitter: float = 1.0
    """Fraction of each wait that is randomised, 0.0 (none) to 1.0 ("full jitter")."""

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise PolicyError(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.initial_delay < 0:
            raise PolicyError(
                f"RetryPolicy.initial_delay must be >= 0 seconds, got {self.initial_delay}"
            )
        if self.multiplier < 1:
            raise PolicyError(f"RetryPolicy.multiplier must be >= 1, got {self.multiplier}")
        if self.max_delay < self.initial_delay:
            raise PolicyError(
                "RetryPolicy.max_delay must be >= initial_delay, "
                f"got {self.max_delay} < {self.initial_delay}"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise PolicyError(f"RetryPolicy.jitter must be within 0.0..1.0, got {self.jitter}")

    def delay_before(self, attempt: int, *, rng: random.Random | None = None) -> float:
        """Seconds to wait before try number ``attempt`` (2 is the first retry)."""
        if attempt < 2:
            return 0.0
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier ** (attempt - 2))
        draw = (rng or random).random()
        return ceiling * (1.0 - self.jitter * draw)
