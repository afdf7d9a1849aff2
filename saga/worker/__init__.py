"""Background workers: the jobs that finish or undo what no reply will, and keep the
database tidy. ``saga run worker`` runs them (:class:`saga.worker.scheduler.Worker`);
several worker processes may run at once."""

from saga.worker.job import BatchResult, Job, JobContext
from saga.worker.policies import PartitionPolicy

__all__ = ["BatchResult", "Job", "JobContext", "PartitionPolicy"]
