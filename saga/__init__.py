"""AUSTA saga engine: cross-journey transactions over PostgreSQL and Kafka.

Everything a journey service, a worker job, a seeder, an example or a user's code needs is
importable from here (and, for tests, from :mod:`saga.testing`); every other module is an
implementation detail that may change without notice.

The names are imported on first use (PEP 562), so ``import saga`` and commands that need
little of it (``saga --help``) do not pay for the coordinator, the driver and the broker
client at start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Where each public name lives; every name in __all__ and no other.
_HOMES: dict[str, str] = {
    "Coordinator": "saga.coordinator",
    "SagaSummary": "saga.coordinator",
    "SignalOutcome": "saga.coordinator",
    "SignalReceipt": "saga.coordinator",
    "AwaitEvent": "saga.definition",
    "IsolationLevel": "saga.definition",
    "NoCompensation": "saga.definition",
    "OnTimeout": "saga.definition",
    "Parallel": "saga.definition",
    "SagaDefinition": "saga.definition",
    "Step": "saga.definition",
    "SubSaga": "saga.definition",
    "BrokerUnavailable": "saga.errors",
    "CheckViolation": "saga.errors",
    "ConfigurationError": "saga.errors",
    "ConnectFailed": "saga.errors",
    "DatabaseError": "saga.errors",
    "DatabaseUnavailable": "saga.errors",
    "DeadlockDetected": "saga.errors",
    "DefinitionConflict": "saga.errors",
    "DefinitionError": "saga.errors",
    "ExclusionViolation": "saga.errors",
    "ForeignKeyViolation": "saga.errors",
    "HandlerConflict": "saga.errors",
    "HandlerError": "saga.errors",
    "InsufficientPrivilege": "saga.errors",
    "IntegrityViolation": "saga.errors",
    "InvalidPayload": "saga.errors",
    "MalformedMessage": "saga.errors",
    "MessageRejected": "saga.errors",
    "MigrationNameError": "saga.errors",
    "PolicyError": "saga.errors",
    "PoolExhausted": "saga.errors",
    "RetriableDatabaseError": "saga.errors",
    "RetriesExhausted": "saga.errors",
    "SagaError": "saga.errors",
    "SagaFailed": "saga.errors",
    "SagaNotFound": "saga.errors",
    "SagaTimeout": "saga.errors",
    "SchemaNotMigrated": "saga.errors",
    "SerializationConflict": "saga.errors",
    "SettingsError": "saga.errors",
    "SignalConflict": "saga.errors",
    "SignalRefused": "saga.errors",
    "StatementTimeout": "saga.errors",
    "StepRefused": "saga.errors",
    "TransactionConflict": "saga.errors",
    "UniqueViolation": "saga.errors",
    "UnknownDefinition": "saga.errors",
    "UsageError": "saga.errors",
    "SagaStatus": "saga.machine",
    "Handler": "saga.participant",
    "Participant": "saga.participant",
    "StepContext": "saga.participant",
    "JourneyService": "saga.participant.journey",
    "RetryPolicy": "saga.retry",
    "Say": "saga.scenarios",
    "Scenario": "saga.scenarios",
    "run_standalone": "saga.scenarios",
    "AppEnv": "saga.settings",
    "Settings": "saga.settings",
    "load_settings": "saga.settings",
    "RunningServices": "saga.stack",
    "running_services": "saga.stack",
    "Database": "saga.store",
    "Connection": "saga.store.connection",
    "Row": "saga.store.connection",
    "journey_tables_sql": "saga.store.journey_tables",
    "FunctionSeeder": "saga.store.seeding",
    "Seeder": "saga.store.seeding",
    "Timeline": "saga.timeline",
    "TimelineEntry": "saga.timeline",
    "load_timeline": "saga.timeline",
    "BatchResult": "saga.worker.job",
    "Job": "saga.worker.job",
    "JobContext": "saga.worker.job",
    "JobFunction": "saga.worker.job",
    "try_job_lock": "saga.worker.job",
    "PartitionPolicy": "saga.worker.policies",
    "PartitionExpiry": "saga.settings",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'saga' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
