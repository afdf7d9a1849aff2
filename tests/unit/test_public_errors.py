"""Every error the public API raises is a :class:`saga.SagaError` whose message names what
was wrong; the ones that replaced ``ValueError``/``TypeError`` still are those too."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

import saga
from saga import (
    Coordinator,
    Database,
    HandlerConflict,
    HandlerError,
    InvalidPayload,
    IsolationLevel,
    NoCompensation,
    Participant,
    SagaDefinition,
    SagaError,
    Settings,
    SettingsError,
    Step,
    StepContext,
    UsageError,
)

ONE_STEP = SagaDefinition(
    "one_step", 1, [Step(name="a", journey="care", action="a", no_compensation=NoCompensation.LAST)]
)


# Nothing here reaches the broker or the server: the engine connects on first use.
NO_BROKER = "127.0.0.1:1"


async def nothing(step: StepContext) -> None:
    return None


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    db = Database.from_settings(
        settings, url="postgresql://nobody@127.0.0.1:1/never", application_name="tests"
    )
    try:
        yield db
    finally:
        await db.dispose()


def participant_of(settings: Settings, database: Database) -> Participant:
    return Participant(
        "care",
        schema="care_journey",
        settings=settings,
        database=database,
        bootstrap_servers=NO_BROKER,
    )


def test_every_exported_error_is_a_saga_error() -> None:
    errors = [
        value
        for name in saga.__all__
        if inspect.isclass(value := getattr(saga, name)) and issubclass(value, BaseException)
    ]
    assert len(errors) > 30
    assert all(issubclass(error, SagaError) for error in errors), [
        error.__name__ for error in errors if not issubclass(error, SagaError)
    ]


@pytest.mark.parametrize("action", ["Reserve", "", "two words", "x" * 101])
async def test_a_bad_action_name_is_a_handler_error_naming_it(
    settings: Settings, database: Database, action: str
) -> None:
    participant = participant_of(settings, database)
    with pytest.raises(HandlerError, match=r"journey 'care'.*lower-case identifier") as caught:
        participant.register(action, nothing)
    assert isinstance(caught.value, ValueError)


async def test_a_second_handler_for_an_action_is_a_handler_conflict(
    settings: Settings, database: Database
) -> None:
    participant = participant_of(settings, database)
    participant.register("reserve_slot", nothing)
    with pytest.raises(HandlerConflict, match="'care' already has a handler for 'reserve_slot'"):
        participant.register("reserve_slot", nothing)


async def test_a_handler_that_is_not_callable_is_refused(
    settings: Settings, database: Database
) -> None:
    participant = participant_of(settings, database)
    handler: Any = "reserve_slot"
    with pytest.raises(HandlerError, match=r"must be an async function.*got str"):
        participant.register("reserve_slot", handler)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (["not", "a", "mapping"], "must be a mapping, got list"),
        ({"when": object()}, "must be JSON-serialisable"),
    ],
)
async def test_a_bad_payload_is_invalid_payload_before_anything_is_stored(
    settings: Settings, database: Database, payload: Any, message: str
) -> None:
    coordinator = Coordinator(settings=settings, database=database, bootstrap_servers=NO_BROKER)
    with pytest.raises(InvalidPayload, match=message) as caught:
        await coordinator.start(ONE_STEP, payload)
    assert isinstance(caught.value, TypeError)


async def test_start_and_register_name_a_wrong_argument_type(
    settings: Settings, database: Database
) -> None:
    coordinator = Coordinator(settings=settings, database=database, bootstrap_servers=NO_BROKER)
    wrong: Any = 42
    with pytest.raises(UsageError, match="SagaDefinition or a registered definition's name"):
        await coordinator.start(wrong, {})
    with pytest.raises(UsageError, match="register takes a SagaDefinition, got str"):
        await coordinator.register("one_step")  # type: ignore[arg-type]


async def test_contradicting_run_driver_options_are_a_usage_error(database: Database) -> None:
    async def unit(conn: saga.Connection) -> None:
        return None

    with pytest.raises(UsageError, match=r"need transaction=True.*SERIALIZABLE"):
        await database.run_driver(unit, transaction=False, isolation=IsolationLevel.SERIALIZABLE)


def test_settings_built_directly_name_the_bad_variable() -> None:
    with pytest.raises(SettingsError, match=r"DATABASE_URL: expected .*scheme must be one of"):
        Settings(database_url="mysql://somewhere/db")
