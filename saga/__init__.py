"""AUSTA saga engine: cross-journey transactions over PostgreSQL and Kafka.

The public surface is re-exported here; everything else is an implementation detail.
"""

from saga.coordinator import Coordinator, SagaSummary
from saga.definition import NoCompensation, SagaDefinition, Step
from saga.errors import (
    BrokerUnavailable,
    ConfigurationError,
    DatabaseError,
    DefinitionConflict,
    DefinitionError,
    MessageRejected,
    RetriableDatabaseError,
    RetriesExhausted,
    SagaError,
    SagaNotFound,
    SagaTimeout,
    SettingsError,
    StepRefused,
    TransactionConflict,
    UnknownDefinition,
)
from saga.machine import SagaStatus
from saga.participant import Participant, StepContext
from saga.retry import RetryPolicy
from saga.settings import AppEnv, Settings, load_settings
from saga.store import Database, IsolationLevel

__all__ = [
    # configuration
    "AppEnv",
    "Settings",
    "load_settings",
    # defining sagas
    "NoCompensation",
    "RetryPolicy",
    "SagaDefinition",
    "Step",
    "IsolationLevel",
    # running sagas
    "Coordinator",
    "Participant",
    "SagaStatus",
    "SagaSummary",
    "StepContext",
    # persistence
    "Database",
    # errors
    "BrokerUnavailable",
    "ConfigurationError",
    "DatabaseError",
    "DefinitionConflict",
    "DefinitionError",
    "MessageRejected",
    "RetriableDatabaseError",
    "RetriesExhausted",
    "SagaError",
    "SagaNotFound",
    "SagaTimeout",
    "SettingsError",
    "StepRefused",
    "TransactionConflict",
    "UnknownDefinition",
]
