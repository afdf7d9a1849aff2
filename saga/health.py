"""Liveness and readiness of an engine process, for the orchestrator's probes.

Every ``saga run ...`` process serves, on ``METRICS_PORT``, ``/metrics`` and:

- ``/live``: 200 while the process's event loop keeps turning. A loop blocked for longer
  than :data:`STALL_SECONDS` answers 503, so the orchestrator restarts the process.
- ``/ready``: 200 once every part of the process takes work (its consumers have joined
  their groups, the worker has started its jobs); 503 while starting, while the broker
  has been unreachable for longer than ``BROKER_UNREACHABLE_SECONDS``, and from the
  moment a SIGTERM begins the shutdown, so no new work is routed to a process that is
  leaving.

The server runs in a thread of its own: a probe is answered even while the loop is busy,
which is what lets ``/live`` tell a slow loop from a stopped one.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

# A loop that has not turned for this long is stuck, not busy: even a saturated engine
# yields to its heartbeat between messages within a second or two.
STALL_SECONDS = 15.0
_BEAT_SECONDS = 1.0

ReadyCheck = Callable[[], bool]


class Phase(StrEnum):
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"


class Health:
    """What ``/live`` and ``/ready`` report for this process."""

    def __init__(self, process: str) -> None:
        self.process = process
        self._checks: dict[str, ReadyCheck] = {}
        self._facts: dict[str, Callable[[], Any]] = {}
        self._stopping = False
        self._beat = time.monotonic()

    def require(self, part: str, check: ReadyCheck) -> None:
        """``part`` must report ready (``check()`` true) before the process is ready."""
        self._checks[part] = check

    def tell(self, key: str, fact: Callable[[], Any]) -> None:
        """Add ``key: fact()`` to every report (what a probe's reader needs to see why)."""
        self._facts[key] = fact

    def stopping(self) -> None:
        """From now on the process is not ready: it is finishing what it holds."""
        self._stopping = True

    def waiting_for(self) -> list[str]:
        """The parts not ready yet (evaluated from the probe's thread: checks only read)."""
        return [part for part, check in self._checks.items() if not _safely(check)]

    @property
    def phase(self) -> Phase:
        if self._stopping:
            return Phase.STOPPING
        if not self._checks or self.waiting_for():
            return Phase.STARTING
        return Phase.READY

    def stalled_for(self) -> float:
        """Seconds since the event loop last turned."""
        return max(0.0, time.monotonic() - self._beat)

    @property
    def alive(self) -> bool:
        return self.stalled_for() < STALL_SECONDS

    async def heartbeat(self) -> None:
        """Prove the loop turns, until cancelled."""
        while True:
            self._beat = time.monotonic()
            await asyncio.sleep(_BEAT_SECONDS)

    def report(self) -> dict[str, Any]:
        return {
            "process": self.process,
            "phase": self.phase.value,
            "waiting_for": self.waiting_for(),
            "loop_stalled_seconds": round(self.stalled_for(), 3),
            **{key: _safely_read(fact) for key, fact in self._facts.items()},
        }


def _safely(check: ReadyCheck) -> bool:
    # A check reading state that is being torn down is simply not ready.
    return bool(_safely_read(check))


def _safely_read(fact: Callable[[], Any]) -> Any:
    """``fact()``, or None when it raised (what it reads may be torn down meanwhile)."""
    try:
        return fact()
    except Exception:
        return None


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes come every few seconds; access lines would drown the process's log."""


def endpoints_app(health: Health | None) -> Callable[..., Iterable[bytes]]:
    """A WSGI app serving ``/live`` and ``/ready`` from ``health``, and the metrics
    everywhere else (Prometheus scrapes ``/metrics``)."""
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if health is None or path not in ("/live", "/ready"):
            return metrics_app(environ, start_response)  # type: ignore[no-any-return]
        ok = health.alive if path == "/live" else health.phase is Phase.READY
        body = json.dumps(health.report()).encode()
        start_response(
            "200 OK" if ok else "503 Service Unavailable",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body)))],
        )
        return [body]

    return app


def serve_endpoints(port: int, health: Health | None, host: str = "0.0.0.0") -> WSGIServer:  # noqa: S104 - probed from outside
    """Serve ``/metrics``, ``/live`` and ``/ready`` on ``port`` (0 picks a free one) from a
    daemon thread; ``server_port`` is the port, ``shutdown()`` stops serving."""
    server = make_server(
        host, port, endpoints_app(health), ThreadingWSGIServer, handler_class=_QuietHandler
    )
    threading.Thread(target=server.serve_forever, name="health-endpoints", daemon=True).start()
    return server
