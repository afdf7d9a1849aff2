"""The coordinator refuses the new shapes until it can run them, before touching anything."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from saga import (
    AwaitEvent,
    Coordinator,
    Database,
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


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(Parallel("both", [step("a"), step("b")]), id="parallel"),
        pytest.param(AwaitEvent("review", "claim_reviewed", 60.0), id="await-event"),
        pytest.param(SubSaga("credit", ("wellness_credit", 1)), id="sub-saga"),
    ],
)
async def test_register_refuses_a_definition_using_a_new_shape(
    coordinator: Coordinator, shape: Position
) -> None:
    definition = SagaDefinition("shaped", 1, [step("first"), shape, FINAL])
    with pytest.raises(DefinitionError) as caught:
        await coordinator.register(definition)
    assert isinstance(caught.value, SagaError)
    assert caught.value.step == shape.name
    assert str(caught.value) == (
        f"saga definition 'shaped', step {shape.name!r}: parallel groups, waits and child "
        "sagas are defined and decided by the state machine but not yet run by the coordinator"
    )
