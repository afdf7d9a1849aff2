"""The engine's own worker jobs; journey services add theirs (``JourneyService.maintenance``)."""

from saga.worker.job import Job
from saga.worker.jobs.inbox import INBOX_RETENTION
from saga.worker.jobs.outbox import OUTBOX_REPUBLISH, OUTBOX_RETENTION
from saga.worker.jobs.partitions import PARTITION_MAINTENANCE
from saga.worker.jobs.purge import SOFT_DELETED_PURGE
from saga.worker.jobs.retention import SAGA_RETENTION
from saga.worker.jobs.retries import RETRY_MONITOR
from saga.worker.jobs.timeouts import SAGA_DEADLINES, STEP_TIMEOUTS
from saga.worker.jobs.vacuum import TABLE_MAINTENANCE

ENGINE_JOBS: tuple[Job, ...] = (
    STEP_TIMEOUTS,
    SAGA_DEADLINES,
    RETRY_MONITOR,
    OUTBOX_REPUBLISH,
    OUTBOX_RETENTION,
    INBOX_RETENTION,
    SAGA_RETENTION,
    SOFT_DELETED_PURGE,
    PARTITION_MAINTENANCE,
    TABLE_MAINTENANCE,
)

__all__ = ["ENGINE_JOBS"]
