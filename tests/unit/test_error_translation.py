"""Translation of driver errors by SQLSTATE. The database-backed tests in
tests/integration/test_transactions.py prove the same mapping on real failures."""

from __future__ import annotations

import pytest
from sqlalchemy import exc as sa_exc

from saga import errors
from saga.store.errors import translate


class DriverError(Exception):
    def __init__(self, sqlstate: str, constraint: str | None = None) -> None:
        super().__init__(f"driver says {sqlstate}")
        self.sqlstate = sqlstate
        self.constraint_name = constraint


def wrapped(sqlstate: str, constraint: str | None = None) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("SELECT 1", None, DriverError(sqlstate, constraint))


@pytest.mark.parametrize(
    ("sqlstate", "kind", "retriable"),
    [
        ("40001", errors.SerializationConflict, True),
        ("40P01", errors.DeadlockDetected, True),
        ("08006", errors.DatabaseUnavailable, True),
        ("57P01", errors.DatabaseUnavailable, True),
        ("57P05", errors.DatabaseUnavailable, True),
        ("53300", errors.DatabaseUnavailable, True),
        ("53100", errors.DatabaseUnavailable, True),
        ("23505", errors.UniqueViolation, False),
        ("23503", errors.ForeignKeyViolation, False),
        ("23514", errors.CheckViolation, False),
        ("23P01", errors.ExclusionViolation, False),
        ("23502", errors.IntegrityViolation, False),
        ("57014", errors.StatementTimeout, False),
        ("42501", errors.InsufficientPrivilege, False),
        ("42P01", errors.DatabaseError, False),
    ],
)
def test_sqlstate_picks_the_most_specific_error(
    sqlstate: str, kind: type[errors.DatabaseError], retriable: bool
) -> None:
    translated = translate(wrapped(sqlstate))
    assert type(translated) is kind
    assert translated.sqlstate == sqlstate
    assert translated.retriable is retriable
    assert isinstance(translated, errors.SagaError)


def test_integrity_errors_carry_the_constraint_name() -> None:
    translated = translate(wrapped("23P01", "care_appointment_no_double_booking"))
    assert isinstance(translated, errors.ExclusionViolation)
    assert translated.constraint == "care_appointment_no_double_booking"


def test_pool_timeout_is_unavailability() -> None:
    assert isinstance(translate(sa_exc.TimeoutError("pool")), errors.DatabaseUnavailable)


def test_refused_connection_is_unavailability() -> None:
    assert isinstance(translate(ConnectionRefusedError()), errors.DatabaseUnavailable)


def test_retries_exhausted_is_not_itself_retriable() -> None:
    last = errors.SerializationConflict("conflict", sqlstate="40001")
    exhausted = errors.RetriesExhausted("book", 3, last)
    assert not exhausted.retriable
    assert "gave up after 3 attempts" in str(exhausted)
    assert exhausted.sqlstate == "40001"


def test_only_conflicts_are_safe_to_rerun_blindly() -> None:
    assert isinstance(translate(wrapped("40001")), errors.TransactionConflict)
    assert isinstance(translate(wrapped("40P01")), errors.TransactionConflict)
    unavailable = translate(wrapped("08006"))
    assert unavailable.retriable
    assert not isinstance(unavailable, errors.TransactionConflict)
