"""Where the demo and the examples find PostgreSQL and the broker: the configured ones, or
embedded ones started for the occasion (and stopped after it)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from saga.settings import Settings, redact_url
from saga.store import admin


@dataclass(frozen=True, slots=True)
class Endpoints:
    database_url: str
    bootstrap_servers: str


@contextlib.contextmanager
def endpoints(
    settings: Settings, *, say: Callable[[str], None], database: str = "austa_dev"
) -> Iterator[Endpoints]:
    """``DATABASE_URL`` and ``KAFKA_BOOTSTRAP_SERVERS`` when set; for each one unset, an
    embedded server (a fresh ``database`` on an embedded PostgreSQL, a Tansu broker)."""
    with contextlib.ExitStack() as stack:
        url = settings.database_url
        if url is None:
            from saga.embedded.postgres import EmbeddedPostgres

            started = time.perf_counter()
            server = stack.enter_context(EmbeddedPostgres())
            say(
                f"started embedded PostgreSQL in {time.perf_counter() - started:.2f}s "
                f"(socket {server.socket_dir})"
            )
            url = asyncio.run(admin.create_database(server.url("postgres"), database))
            say(f"created database {database}")
        else:
            say(f"using DATABASE_URL ({redact_url(url)})")
        bootstrap = settings.kafka_bootstrap_servers
        if bootstrap is None:
            from saga.embedded.broker import EmbeddedBroker

            broker = stack.enter_context(EmbeddedBroker())
            bootstrap = broker.bootstrap_servers
            say(f"started embedded Kafka-protocol broker (Tansu) on {bootstrap}")
        else:
            say(f"using KAFKA_BOOTSTRAP_SERVERS ({bootstrap})")
        yield Endpoints(url, bootstrap)
