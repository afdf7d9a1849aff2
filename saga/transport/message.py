"""The message every transport sends: a topic, a key that keeps order, a value, headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message to produce. The key picks the partition, so every message about one
    saga shares its key and keeps its order."""

    topic: str
    key: str
    value: bytes
    headers: Mapping[str, str] = field(default_factory=dict)
