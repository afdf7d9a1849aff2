"""Retention's one statement: delete a table's oldest rows past their time, in batches."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from saga.store.driver import DriverConnection, rows_affected


async def delete_oldest(
    conn: DriverConnection,
    tables: Sequence[str],
    *,
    age_column: str,
    keep_seconds: float,
    limit: int,
    also: str = "true",
    args: Sequence[Any] = (),
) -> int:
    """Delete up to ``limit`` rows, across ``tables`` in order, whose ``age_column`` is
    older than ``keep_seconds`` and that match ``also`` (on alias ``t``, parameters from
    ``$3``: ``args``), oldest first. Rows another transaction holds are skipped, so a
    second worker takes others and nothing waits on a live row."""
    deleted = 0
    for table in tables:
        if deleted >= limit:
            break
        status = await conn.execute(
            f"""
            WITH doomed AS MATERIALIZED (
                SELECT t.id FROM {table} AS t
                WHERE t.{age_column} < now() - make_interval(secs => $1) AND ({also})
                ORDER BY t.{age_column}
                LIMIT $2
                FOR UPDATE OF t SKIP LOCKED
            )
            DELETE FROM {table} AS t USING doomed WHERE t.id = doomed.id
            """,
            keep_seconds,
            limit - deleted,
            *args,
        )
        deleted += rows_affected(status)
    return deleted
