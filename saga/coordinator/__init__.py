"""The coordinator side: start sagas, apply replies, dispatch the next command."""

from saga.coordinator.service import Coordinator
from saga.store.records import SagaSummary

__all__ = ["Coordinator", "SagaSummary"]
