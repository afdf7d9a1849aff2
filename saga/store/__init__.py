"""PostgreSQL persistence: the engine factory, the transaction runner, error translation,
the saga log tables, the schema lint and the migration commands."""

from saga.definition import IsolationLevel
from saga.store.database import Database
from saga.store.engine import create_engine

__all__ = ["Database", "IsolationLevel", "create_engine"]
