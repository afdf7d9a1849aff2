"""What every journey's step handlers share when reading a saga's payload: the refusal a
malformed value gets, and the operator's calendar."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from saga import StepRefused

# The operator's dates (service dates, claims, goal periods) are Brazilian.
OPERATOR_TIMEZONE = "America/Sao_Paulo"
OPERATOR_ZONE = ZoneInfo(OPERATOR_TIMEZONE)


def payload_uuid(source: Mapping[str, Any], key: str) -> uuid.UUID:
    """``source[key]`` as a UUID, or a refusal naming the key and what it held."""
    value = source.get(key)
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise StepRefused(f"invalid payload: {key} must be a uuid string, got {value!r}")


def operator_today() -> date:
    """Today in São Paulo: what "today" means for coverage, claims and goals."""
    return datetime.now(OPERATOR_ZONE).date()
