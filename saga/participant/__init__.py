"""The participant side: journey services run step handlers inside one transaction each."""

from saga.participant.runtime import Handler, StepContext
from saga.participant.service import Participant

__all__ = ["Handler", "Participant", "StepContext"]
