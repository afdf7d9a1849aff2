"""How the console's templates write times, durations and masked documents."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from saga.masking import mask, summarize
from saga.operator.render import duration_text, json_default


def utc(moment: datetime | None) -> str:
    if moment is None:
        return ""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") + "Z"


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat()


def duration(value: timedelta | float | None) -> str:
    """A timedelta, or seconds."""
    if value is None:
        return ""
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    return duration_text(seconds)


def milliseconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:,.0f} ms" if value >= 10 else f"{value:.1f} ms"


def masked_json(value: Any) -> str:
    """A payload, context or result as an operator may see it: personal and health fields
    masked exactly as ``saga show`` masks them."""
    return json.dumps(mask(value), indent=2, default=json_default, ensure_ascii=False)


def masked(value: Any) -> Any:
    """A mapping with its personal and health fields masked (a search attribute is never
    one, as registered; a process may mask more fields than the one that registered)."""
    return mask(value)


def short_error(text: str | None) -> str:
    return summarize(text) or ""


FILTERS: dict[str, Callable[..., Any]] = {
    "masked": masked,
    "utc": utc,
    "iso": iso,
    "duration": duration,
    "ms": milliseconds,
    "masked_json": masked_json,
    "short_error": short_error,
}
