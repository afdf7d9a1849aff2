"""A saga's whole history as one JSON-ready document: what ``saga show --json`` prints
and the console's download gives, masked the same way in both."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from saga.masking import mask
from saga.operator.queries import SagaDetail
from saga.timeline import TimelineEntry


def detail_document(detail: SagaDetail) -> dict[str, Any]:
    took = detail.took
    return {
        "id": str(detail.id),
        "definition": detail.definition_name,
        "version": detail.definition_version,
        "status": detail.status.value,
        "error": detail.error,
        "started_at": detail.started_at,
        "finished_at": detail.finished_at,
        "took_ms": None if took is None else took.total_seconds() * 1000,
        "current_step": {
            "index": detail.current_step,
            "name": detail.step_name,
            "journey": detail.journey,
            "phase": detail.phase.value,
            "attempt": detail.step_attempt,
            "started_at": detail.step_started_at,
            "deadline": detail.step_deadline,
        },
        "deadline": detail.deadline,
        "idempotency_key": detail.idempotency_key,
        "payload": mask(detail.payload),
        "context": mask(detail.context),
        "position_kind": detail.position_kind,
        "waiting": waiting_document(detail),
        "signals": [
            {**asdict(signal), "payload": mask(signal.payload), "state": signal.state}
            for signal in detail.signals
        ],
        "family": [asdict(link) for link in detail.family],
        "timeline": [entry_document(entry) for entry in detail.entries],
    }


def waiting_document(detail: SagaDetail) -> dict[str, Any] | None:
    if detail.waiting_for is None:
        return None
    return {
        "event": detail.waiting_for,
        "wait": detail.step_name,
        "since": detail.waiting_since,
        "until": detail.step_deadline,
    }


def entry_document(entry: TimelineEntry) -> dict[str, Any]:
    document = asdict(entry)
    document["request"] = mask(entry.request)
    document["response"] = mask(entry.response)
    return document
