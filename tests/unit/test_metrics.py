"""The metrics' own rules: which counter a finished saga moves, the pool gauges' sums,
and the DATABASE_SLOW_UNIT_THRESHOLD setting."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client import REGISTRY

from saga import metrics
from saga.errors import SettingsError
from saga.machine import SagaStatus
from saga.settings import load_settings
from tests.conftest import REPO_ROOT


def value(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.mark.parametrize(
    ("status", "counter"),
    [
        (SagaStatus.COMPLETED, "saga_completed_total"),
        (SagaStatus.COMPENSATED, "saga_compensated_total"),
        (SagaStatus.ABORTED, "saga_aborted_total"),
        ("compensated", "saga_compensated_total"),
    ],
)
def test_a_finished_saga_moves_its_status_counter_only(
    status: SagaStatus | str, counter: str
) -> None:
    definition = f"unit_{uuid.uuid4().hex[:8]}"
    names = ["saga_completed_total", "saga_compensated_total", "saga_aborted_total"]
    metrics.count_finished(definition, status)
    moved = {name: value(name, {"definition": definition}) for name in names}
    assert moved == {name: (1.0 if name == counter else 0.0) for name in names}


@pytest.mark.parametrize("status", [SagaStatus.PARKED, SagaStatus.RUNNING, "compensating"])
def test_parked_and_in_flight_statuses_count_nothing(status: SagaStatus | str) -> None:
    definition = f"unit_{uuid.uuid4().hex[:8]}"
    metrics.count_finished(definition, status)
    for name in ("saga_completed_total", "saga_compensated_total", "saga_aborted_total"):
        assert value(name, {"definition": definition}) == 0.0


def test_an_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="'done' is not a valid SagaStatus"):
        metrics.count_finished("unit", "done")


class FakePool:
    def __init__(self, status: metrics.PoolStatus | None) -> None:
        self.status = status

    def pool_status(self) -> metrics.PoolStatus | None:
        return self.status


def test_the_pool_gauges_sum_every_tracked_pool_and_forget_disposed_ones() -> None:
    before = {
        "in_use": value("saga_db_pool_connections", {"state": "in_use"}),
        "idle": value("saga_db_pool_connections", {"state": "idle"}),
        "waiting": value("saga_db_pool_waiting"),
        "size": value("saga_db_pool_size"),
    }
    first = FakePool(metrics.PoolStatus(in_use=2, idle=1, waiting=3, size=5))
    second = FakePool(metrics.PoolStatus(in_use=1, idle=0, waiting=0, size=2))
    unpooled = FakePool(None)
    for pool in (first, second, unpooled):
        metrics.POOLS.track(pool)
    try:
        assert value("saga_db_pool_connections", {"state": "in_use"}) - before["in_use"] == 3
        assert value("saga_db_pool_connections", {"state": "idle"}) - before["idle"] == 1
        assert value("saga_db_pool_waiting") - before["waiting"] == 3
        assert value("saga_db_pool_size") - before["size"] == 7
        metrics.POOLS.forget(first)
        assert value("saga_db_pool_size") - before["size"] == 2
    finally:
        for pool in (first, second, unpooled):
            metrics.POOLS.forget(pool)


def test_the_slow_unit_threshold_defaults_to_500_and_is_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DATABASE_SLOW_UNIT_THRESHOLD", raising=False)
    assert load_settings(env_dir=REPO_ROOT).database_slow_unit_threshold == 500
    monkeypatch.setenv("DATABASE_SLOW_UNIT_THRESHOLD", "0")
    with pytest.raises(SettingsError, match="DATABASE_SLOW_UNIT_THRESHOLD"):
        load_settings(env_dir=REPO_ROOT)
