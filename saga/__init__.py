"""AUSTA saga engine: cross-journey transactions over PostgreSQL and Kafka.

Everything a journey service, a worker job, a seeder, an example or a user's code needs is
importable from here (and, for tests, from :mod:`saga.testing`); every other module is an
implementation detail that may change without notice.
"""

from saga.coordinator import Coordinator, SagaSummary, SignalOutcome, SignalReceipt
from saga.definition import (
    AwaitEvent,
    IsolationLevel,
    NoCompensation,
    OnTimeout,
    Parallel,
    SagaDefinition,
    Step,
    SubSaga,
)
from saga.errors import (
    BrokerUnavailable,
    CheckViolation,
    ConfigurationError,
    ConnectFailed,
    DatabaseError,
    DatabaseUnavailable,
    DeadlockDetected,
    DefinitionConflict,
    DefinitionError,
    ExclusionViolation,
    ForeignKeyViolation,
    HandlerConflict,
    HandlerError,
    InsufficientPrivilege,
    IntegrityViolation,
    InvalidPayload,
    MalformedMessage,
    MessageRejected,
    MigrationNameError,
    PolicyError,
    PoolExhausted,
    RetriableDatabaseError,
    RetriesExhausted,
    SagaError,
    SagaFailed,
    SagaNotFound,
    SagaTimeout,
    SchemaNotMigrated,
    SerializationConflict,
    SettingsError,
    SignalConflict,
    SignalRefused,
    StatementTimeout,
    StepRefused,
    TransactionConflict,
    UniqueViolation,
    UnknownDefinition,
    UsageError,
)
from saga.machine import SagaStatus
from saga.participant import Handler, Participant, StepContext
from saga.participant.journey import JourneyService
from saga.retry import RetryPolicy
from saga.scenarios import Say, Scenario, run_standalone
from saga.settings import AppEnv, PartitionExpiry, Settings, load_settings
from saga.stack import RunningServices, running_services
from saga.store import Database
from saga.store.connection import Connection, Row
from saga.store.journey_tables import journey_tables_sql
from saga.store.seeding import FunctionSeeder, Seeder
from saga.timeline import Timeline, TimelineEntry, load_timeline
from saga.worker.job import BatchResult, Job, JobContext, JobFunction, try_job_lock
from saga.worker.policies import PartitionPolicy

__all__ = [
    # configuration
    "AppEnv",
    "Settings",
    "load_settings",
    # defining sagas
    "AwaitEvent",
    "IsolationLevel",
    "NoCompensation",
    "OnTimeout",
    "Parallel",
    "RetryPolicy",
    "SagaDefinition",
    "Step",
    "SubSaga",
    # running sagas
    "Coordinator",
    "SagaStatus",
    "SagaSummary",
    "SignalOutcome",
    "SignalReceipt",
    # writing a journey service: handlers, its declaration, its background jobs
    "Handler",
    "JourneyService",
    "Participant",
    "StepContext",
    "BatchResult",
    "Job",
    "JobContext",
    "JobFunction",
    "PartitionPolicy",
    "PartitionExpiry",
    "try_job_lock",
    # persistence: the connection units and handlers get, and seed data
    "Connection",
    "Database",
    "FunctionSeeder",
    "Row",
    "Seeder",
    "journey_tables_sql",
    # seeing a saga run: timelines, in-process stacks, scripted scenarios
    "RunningServices",
    "Say",
    "Scenario",
    "Timeline",
    "TimelineEntry",
    "load_timeline",
    "run_standalone",
    "running_services",
    # errors: misuse (fix the code or the configuration)
    "SagaError",
    "ConfigurationError",
    "DefinitionConflict",
    "DefinitionError",
    "HandlerConflict",
    "HandlerError",
    "MigrationNameError",
    "PolicyError",
    "SettingsError",
    "UnknownDefinition",
    "UsageError",
    # errors: a saga's run and its messages
    "InvalidPayload",
    "MalformedMessage",
    "MessageRejected",
    "SagaFailed",
    "SagaNotFound",
    "SagaTimeout",
    "SignalConflict",
    "SignalRefused",
    "StepRefused",
    "BrokerUnavailable",
    # errors: the database, as handlers see them (translated from the driver)
    "CheckViolation",
    "ConnectFailed",
    "DatabaseError",
    "DatabaseUnavailable",
    "DeadlockDetected",
    "ExclusionViolation",
    "ForeignKeyViolation",
    "InsufficientPrivilege",
    "IntegrityViolation",
    "PoolExhausted",
    "RetriableDatabaseError",
    "RetriesExhausted",
    "SchemaNotMigrated",
    "SerializationConflict",
    "StatementTimeout",
    "TransactionConflict",
    "UniqueViolation",
]
