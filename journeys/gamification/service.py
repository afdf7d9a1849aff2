"""The gamification journey's service, run by `saga run participant --journey gamification`."""

from __future__ import annotations

from journeys.gamification.maintenance import REFRESH_LEADERBOARD
from journeys.gamification.steps import HANDLERS
from saga import JourneyService, PartitionPolicy

SERVICE = JourneyService(
    name="gamification",
    schema="gamification",
    database_role="austa_gamification",
    handlers=HANDLERS,
    definitions=(),
    maintenance=(REFRESH_LEADERBOARD,),
    # Every award and revocation updates the member's profile totals; the ledger is
    # append-only, but every rolled-back or re-run award leaves dead rows in it.
    churning_tables=(
        "gamification.gamification_points_ledger",
        "gamification.gamification_profile",
    ),
    # Event history is kept two years; older months are detached for archiving.
    partitions=(PartitionPolicy("gamification.gamification_event", retention_months=24),),
)
