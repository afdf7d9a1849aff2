"""The coordinator refuses child sagas until it can run them, before touching anything;
parallel groups and waits it runs (tests/integration/test_parallel_groups.py and
test_waits_and_signals.py)."""

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


async def test_register_refuses_a_definition_using_a_child_saga(
    coordinator: Coordinator,
) -> None:
    shape = SubSaga("credit", ("wellness_credit", 1))
    definition = SagaDefinition(
        "shaped", 1, [step("first"), Parallel("both", [step("a"), step("b")]), shape, FINAL]
    )
    with pytest.raises(DefinitionError) as caught:
        await coordinator.register(definition)
    assert isinstance(caught.value, SagaError)
    assert caught.value.step == shape.name
    assert str(caught.value) == (
        "saga definition 'shaped', step 'credit': child sagas are defined and decided by "
        "the state machine but not yet run by the coordinator (parallel groups and waits are)"
    )


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(Parallel("both", [step("a"), step("b")]), id="parallel"),
        pytest.param(AwaitEvent("review", "claim_reviewed", 60.0), id="await-event"),
    ],
)
async def test_register_lets_groups_and_waits_through_to_the_store(
    coordinator: Coordinator, shape: Position
) -> None:
    # Past the refusal the definition reaches the store, which is nowhere here.
    definition = SagaDefinition("shaped", 1, [step("first"), shape, FINAL])
    with pytest.raises(DatabaseUnavailable):
        await coordinator.register(definition)
