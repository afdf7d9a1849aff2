"""How operator commands print: aligned plain-text tables by default, JSON with ``--json``.

Tables are for people: ``-`` for nothing, times in UTC to the second, durations rounded.
JSON is for scripts: every value kept (times as ISO 8601 with their zone, durations in
seconds), one document per command.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, TextIO


def print_table(
    rows: Sequence[Mapping[str, Any]], columns: Sequence[str], *, file: TextIO | None = None
) -> None:
    """A header row and one line per row, each column as wide as its widest cell.

    ``file`` defaults to the current ``sys.stdout`` (looked up at call time, so a
    redirected stdout is honoured)."""
    out = sys.stdout if file is None else file
    cells = [[cell(row.get(column)) for column in columns] for row in rows]
    widths = [
        max([len(column), *(len(line[i]) for line in cells)]) for i, column in enumerate(columns)
    ]
    for line in [list(columns), *cells]:
        padded = (text.ljust(width) for text, width in zip(line, widths, strict=True))
        print("  ".join(padded).rstrip(), file=out)


def print_json(value: Any, *, file: TextIO | None = None) -> None:
    """``value`` as indented JSON; anything JSON lacks (times, ids, dataclasses) is
    converted by :func:`json_default`, the rest falls back to ``str``."""
    out = sys.stdout if file is None else file
    print(json.dumps(value, default=json_default, indent=2), file=out)


def json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return str(value)


def cell(value: Any) -> str:
    """One value as a table shows it."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, timedelta):
        return duration_text(value.total_seconds())
    if isinstance(value, float):
        return f"{value:.1f}"
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, list | tuple):
        return ",".join(cell(item) for item in value)
    if isinstance(value, Mapping):
        return json.dumps(value, default=json_default, separators=(",", ":"))
    return str(value)


def utc_text(moment: datetime) -> str:
    """``2026-11-25T18:00:00Z``: UTC, to the second."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(seconds: float) -> str:
    """``850 ms``, ``12.3 s``, ``4m05s``, ``2h03m``, ``3d04h``: short and still exact
    enough to compare at a glance."""
    if seconds < 0:
        return "-" + duration_text(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
