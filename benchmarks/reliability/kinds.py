"""The fault kinds the report counts, and the marks injected records carry.

Records an injector writes are marked so that the other injectors leave them alone: a
copy carries ``x-fault-copy: 1``, a poison record ``x-fault-kind: <kind>``, and every
envelope the poison injector builds names the definition ``fault-injection`` (and so
does the failed reply a participant sends back for an unknown action).
"""

from __future__ import annotations

DUPLICATE_DELIVERY = "duplicate_delivery"
REPLY_REORDERED = "reply_reordered"
POISON_GARBAGE = "poison_garbage"
POISON_OVERSIZE = "poison_oversize"
POISON_UNKNOWN_ACTION = "poison_unknown_action"
POISON_INVALID_PAYLOAD = "poison_invalid_payload"
BACKEND_TERMINATED = "backend_terminated"
SERIALIZATION_CONFLICT = "serialization_conflict"

POISON_KINDS = (POISON_GARBAGE, POISON_OVERSIZE, POISON_UNKNOWN_ACTION, POISON_INVALID_PAYLOAD)

COPY_HEADER = "x-fault-copy"
FAULT_KIND_HEADER = "x-fault-kind"
FAULT_DEFINITION = "fault-injection"
