"""The gamification journey's background job: keeping the leaderboard current.

``gamification.gamification_leaderboard`` is a materialized view of the profiles' XP and
level; points the sagas award show in it only once it is refreshed.
:data:`REFRESH_LEADERBOARD` calls ``gamification.refresh_leaderboard()`` (``REFRESH
MATERIALIZED VIEW CONCURRENTLY`` with the owner's rights, so readers are never blocked)
under the job's advisory lock: with several workers, one refreshes and the others skip
their turn instead of queueing behind it for a second, identical refresh.
"""

from __future__ import annotations

from saga import BatchResult, Connection, Job, JobContext, try_job_lock

REFRESH = "SELECT gamification.refresh_leaderboard()"


async def refresh_leaderboard(ctx: JobContext) -> BatchResult:
    async def batch(conn: Connection) -> bool:
        if not await try_job_lock(conn, REFRESH_LEADERBOARD.name):
            return False
        await conn.execute(REFRESH)
        return True

    if not await ctx.database.run_driver(batch, name=f"worker.{REFRESH_LEADERBOARD.name}"):
        return BatchResult.nothing()
    return BatchResult(1, {"refreshed": 1})


REFRESH_LEADERBOARD = Job(
    name="refresh_leaderboard",
    run=refresh_leaderboard,
    interval=300.0,
    batch=1,
    description="the leaderboard materialized view refreshed (concurrently) from the profiles",
    repeat_when_full=False,
)
