"""The coordinator side: start sagas, apply replies, dispatch the next command."""

from saga.coordinator.service import Coordinator
from saga.coordinator.signals import SignalOutcome, SignalReceipt
from saga.store.records import SagaSummary

__all__ = ["Coordinator", "SagaSummary", "SignalOutcome", "SignalReceipt"]
