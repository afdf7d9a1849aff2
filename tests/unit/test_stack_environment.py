"""What a process started beside in-process services (``saga signal`` in a scenario) is
told: their database, broker and settings, whatever this process's environment says."""

from __future__ import annotations

import pytest

from saga.coordinator import Coordinator
from saga.settings import Settings
from saga.stack import RunningServices
from saga.store import Database

BROKER = "127.0.0.1:45583"
URL = "postgresql://postgres@/austa_example?host=/tmp/austa-pg-x/data"


async def test_the_process_environment_points_at_the_services_and_their_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("METRICS_PORT", raising=False)
    settings = Settings(kafka_topic_prefix="scene.42", kafka_topic_partitions=3)
    # What this process's environment says after the services were set up.
    monkeypatch.setenv("DATABASE_URL", "postgresql://someone@elsewhere:5432/other")
    monkeypatch.setenv("KAFKA_TOPIC_PREFIX", "not.these")
    monkeypatch.setenv("METRICS_PORT", "9100")
    monkeypatch.setenv("SAGA_ACTOR", "kept.as.it.is")
    database = Database.from_settings(settings, url=URL)
    services = RunningServices(
        coordinator=Coordinator(settings=settings, database=database, bootstrap_servers=BROKER),
        database=database,
        bootstrap_servers=BROKER,
        database_url=URL,
    )
    try:
        environment = services.process_environment()
    finally:
        await database.dispose()

    assert environment["DATABASE_URL"] == URL  # the embedded default's socket URL too
    assert environment["KAFKA_BOOTSTRAP_SERVERS"] == BROKER
    assert environment["KAFKA_TOPIC_PREFIX"] == "scene.42"
    assert environment["KAFKA_TOPIC_PARTITIONS"] == "3"
    assert "METRICS_PORT" not in environment  # unset in the services' settings
    assert environment["SAGA_ACTOR"] == "kept.as.it.is"  # not a setting: inherited
