"""AUSTA saga engine: cross-journey transactions over PostgreSQL and Kafka.

The public surface is re-exported here; everything else is an implementation detail.
"""

from saga.errors import (
    ConfigurationError,
    DatabaseError,
    RetriableDatabaseError,
    RetriesExhausted,
    SagaError,
    SettingsError,
    TransactionConflict,
)
from saga.retry import RetryPolicy
from saga.settings import AppEnv, Settings, load_settings
from saga.store import Database, IsolationLevel

__all__ = [
    # configuration
    "AppEnv",
    "Settings",
    "load_settings",
    # persistence
    "Database",
    "IsolationLevel",
    "RetryPolicy",
    # errors
    "ConfigurationError",
    "DatabaseError",
    "RetriableDatabaseError",
    "RetriesExhausted",
    "SagaError",
    "SettingsError",
    "TransactionConflict",
]
