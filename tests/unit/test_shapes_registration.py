"""What the coordinator checks of the shapes at registration before touching anything;
groups, waits and child sagas it runs (tests/integration/test_parallel_groups.py,
test_waits_and_signals.py and test_child_sagas.py, which also checks that a child saga
not registered is named)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from saga import (
    AwaitEvent,
    Coordinator,
    Database,
    DatabaseUnavailable,
    DefinitionError,
    NoCompensation,
    Parallel,
    SagaDefinition,
    SagaError,
    Settings,
    Step,
    SubSaga,
)
from saga.shapes import Position

# Nothing here may reach the server or the broker: a store attempt would fail otherwise.
NOWHERE = "postgresql://nobody@127.0.0.1:1/never"
NO_BROKER = "127.0.0.1:1"


@pytest.fixture
async def coordinator(settings: Settings) -> AsyncIterator[Coordinator]:
    database = Database.from_settings(settings, url=NOWHERE, application_name="tests")
    try:
        yield Coordinator(settings=settings, database=database, bootstrap_servers=NO_BROKER)
    finally:
        await database.dispose()


def step(name: str) -> Step:
    return Step(name=name, journey="care", action=name, compensation=f"undo_{name}")


FINAL = Step(name="confirm", journey="care", action="confirm", no_compensation=NoCompensation.LAST)


async def test_register_refuses_a_saga_that_starts_itself_before_touching_the_store(
    coordinator: Coordinator,
) -> None:
    shape = SubSaga("again", ("shaped", 1))
    definition = SagaDefinition("shaped", 1, [step("first"), shape, FINAL])
    with pytest.raises(DefinitionError) as caught:
        await coordinator.register(definition)
    assert isinstance(caught.value, SagaError)
    assert caught.value.step == shape.name


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(Parallel("both", [step("a"), step("b")]), id="parallel"),
        pytest.param(AwaitEvent("review", "claim_reviewed", 60.0), id="await-event"),
        # Its child is looked up among the registered definitions: in the store.
        pytest.param(SubSaga("credit", ("wellness_credit", 1)), id="sub-saga"),
    ],
)
async def test_register_lets_groups_waits_and_children_through_to_the_store(
    coordinator: Coordinator, shape: Position
) -> None:
    # Past the refusal the definition reaches the store, which is nowhere here.
    definition = SagaDefinition("shaped", 1, [step("first"), shape, FINAL])
    with pytest.raises(DatabaseUnavailable):
        await coordinator.register(definition)
