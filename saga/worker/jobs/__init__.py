"""The engine's own worker jobs; journey services add theirs (``JourneyService.maintenance``)."""

from saga.worker.job import Job
from saga.worker.jobs.retries import RETRY_MONITOR
from saga.worker.jobs.timeouts import SAGA_DEADLINES, STEP_TIMEOUTS

ENGINE_JOBS: tuple[Job, ...] = (
    STEP_TIMEOUTS,
    SAGA_DEADLINES,
    RETRY_MONITOR,
)

__all__ = ["ENGINE_JOBS"]
