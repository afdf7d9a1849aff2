"""A member's level from their XP: the one rule the seeds and the step handlers share."""

from __future__ import annotations

XP_PER_LEVEL = 100


def level_for(xp: int) -> int:
    """Level 1 from 0 XP, one more every ``XP_PER_LEVEL``."""
    return 1 + xp // XP_PER_LEVEL
