"""Readiness and liveness as the orchestrator sees them (real HTTP on a local port), the
``saga health`` probe, and the bounded shutdown on a real SIGTERM to this process."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

import pytest

from saga.cli import main
from saga.cli.run import until_signalled
from saga.health import STALL_SECONDS, Health, Phase, serve_endpoints


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.fixture
def serving() -> Iterator[Callable[[Health], int]]:
    """Serve a Health's endpoints on a free local port; stopped after the test."""
    servers: list[WSGIServer] = []

    def serve(health: Health) -> int:
        servers.append(serve_endpoints(0, health, host="127.0.0.1"))
        return int(servers[-1].server_port)

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_process_is_ready_only_when_every_part_is_and_not_once_it_stops() -> None:
    health = Health("coordinator")
    assert health.report()["phase"] == "starting"  # nothing registered yet: not ready
    consuming = {"coordinator": False, "worker": False}
    health.require("coordinator", lambda: consuming["coordinator"])
    health.require("worker", lambda: consuming["worker"])
    assert (health.phase, health.waiting_for()) == (Phase.STARTING, ["coordinator", "worker"])
    consuming["coordinator"] = True
    assert health.waiting_for() == ["worker"]
    consuming["worker"] = True
    assert health.phase is Phase.READY
    health.stopping()
    assert health.report()["phase"] == "stopping"


def test_a_check_that_raises_is_not_ready() -> None:
    health = Health("participant-care")
    health.require("care", lambda: 1 / 0 > 0)
    assert health.waiting_for() == ["care"]


def test_a_loop_that_stopped_turning_is_not_alive() -> None:
    health = Health("worker")
    assert health.alive
    health._beat = time.monotonic() - STALL_SECONDS - 1
    assert not health.alive


def test_the_endpoints_answer_ready_live_and_metrics_over_http(
    serving: Callable[[Health], int],
) -> None:
    health = Health("participant-plan")
    ready = {"plan": False}
    health.require("plan", lambda: ready["plan"])
    port = serving(health)

    status, body = get(port, "/ready")
    report: dict[str, Any] = json.loads(body)
    assert status == 503
    assert report["phase"] == "starting"
    assert report["waiting_for"] == ["plan"]
    assert get(port, "/live")[0] == 200

    ready["plan"] = True
    assert get(port, "/ready")[0] == 200
    health.stopping()
    status, body = get(port, "/ready")
    assert (status, json.loads(body)["phase"]) == (503, "stopping")
    assert get(port, "/live")[0] == 200  # leaving slowly is not being dead

    health._beat = time.monotonic() - STALL_SECONDS - 1
    assert get(port, "/live")[0] == 503

    status, body = get(port, "/metrics")
    assert status == 200
    assert b"# HELP saga_started_total" in body


def test_saga_health_exits_0_when_ready_1_when_not(
    serving: Callable[[Health], int], capsys: pytest.CaptureFixture[str]
) -> None:
    health = Health("worker")
    ready = {"worker": False}
    health.require("worker", lambda: ready["worker"])
    port = serving(health)

    assert main(["health", "--url", f"http://127.0.0.1:{port}/ready"]) == 1
    assert "answered 503: worker is starting, waiting for worker" in capsys.readouterr().out
    ready["worker"] = True
    assert main(["health", "--url", f"http://127.0.0.1:{port}/ready"]) == 0
    assert "answered 200: worker is ready" in capsys.readouterr().out


def test_saga_health_reads_metrics_port_and_reports_a_silent_port(
    serving: Callable[[Health], int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    health = Health("all")
    health.require("everything", lambda: True)
    port = serving(health)
    monkeypatch.setenv("METRICS_PORT", str(port))
    assert main(["health"]) == 0
    assert main(["health", "--live"]) == 0
    assert f"http://127.0.0.1:{port}/live answered 200" in capsys.readouterr().out

    monkeypatch.setenv("METRICS_PORT", str(unused_port()))
    assert main(["health"]) == 1
    assert "did not answer" in capsys.readouterr().out

    monkeypatch.delenv("METRICS_PORT")
    assert main(["health"]) == 2
    assert "needs --url or METRICS_PORT" in capsys.readouterr().err


def unused_port() -> int:
    """A local port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def signal_soon() -> None:
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)


async def test_sigterm_stops_the_work_and_reports_a_clean_stop() -> None:
    done = asyncio.Event()
    calls: list[str] = []

    async def work() -> None:
        await done.wait()
        calls.append("work ended")

    async def stop() -> None:
        calls.append("stop")
        done.set()

    sending = asyncio.ensure_future(signal_soon())
    clean = await until_signalled(
        work(), stop, timeout=5, on_signal=lambda: calls.append("not ready")
    )
    await sending
    assert clean
    assert calls == ["not ready", "stop", "work ended"]


async def test_a_stop_that_overruns_its_timeout_is_cut_short_and_reported() -> None:
    cancelled = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.Event().wait()  # never ends by itself
        finally:
            cancelled.set()

    async def stop() -> None:
        await asyncio.sleep(60)  # never finishes in time

    sending = asyncio.ensure_future(signal_soon())
    started = time.monotonic()
    clean = await until_signalled(work(), stop, timeout=0.3)
    await sending
    assert not clean
    assert cancelled.is_set()  # the work was cancelled: what it held is redelivered
    assert time.monotonic() - started < 5


async def test_work_that_ends_by_itself_needs_no_signal() -> None:
    async def work() -> None:
        await asyncio.sleep(0)

    async def stop() -> None:
        raise AssertionError("stop is for signals")

    assert await until_signalled(work(), stop, timeout=1)


def test_a_metrics_port_in_use_is_a_one_line_error() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # noqa: S104 - where the process binds too
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "saga", "run", "worker"],
            env={
                **os.environ,
                "APP_ENV": "test",
                # Never connected to: the endpoints are bound before any database work.
                "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/nowhere",
                "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9",
                "METRICS_PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"saga: error: cannot serve /metrics, /live and /ready on METRICS_PORT={port}: "
        "Address already in use"
    ]
