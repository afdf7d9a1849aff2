"""``saga.journey_tables_sql``: the names it builds and the names it refuses. (Its shape
against the migrations: tests/integration/test_journey_tables.py.)"""

from __future__ import annotations

import re

import pytest

from saga import UsageError, journey_tables_sql
from saga.store.inbox import JourneyTables


def created_tables(statements: list[str]) -> list[str]:
    return [
        statement.split()[5]
        for statement in statements
        if statement.startswith("CREATE TABLE IF NOT EXISTS")
    ]


def test_the_tables_are_where_the_participant_looks() -> None:
    # Participant("shop", schema="tour") and JourneyService both name them this way.
    expected = JourneyTables.of("tour", "shop")
    assert created_tables(journey_tables_sql("tour", "shop")) == [expected.inbox, expected.outbox]
    assert expected.inbox == "tour.shop_inbox"


def test_every_statement_may_run_again() -> None:
    for statement in journey_tables_sql("tour", "shop"):
        assert statement.startswith(
            (
                "CREATE TABLE IF NOT EXISTS",
                "CREATE INDEX IF NOT EXISTS",
                "CREATE OR REPLACE TRIGGER",
            )
        ), statement


def test_grant_to_adds_one_grant_on_both_tables() -> None:
    plain = journey_tables_sql("tour", "shop")
    granted = journey_tables_sql("tour", "shop", grant_to="austa_shop")
    assert granted[:-1] == plain
    assert granted[-1] == (
        "GRANT SELECT, INSERT, UPDATE, DELETE ON tour.shop_inbox, tour.shop_outbox TO austa_shop"
    )


def test_the_longest_journey_fits_every_name_in_postgresqls_limit() -> None:
    longest = "j" * 33
    names = [
        word
        for statement in journey_tables_sql("tour", longest)
        for word in statement.replace("(", " ").split()
        if word.startswith(longest)
    ]
    assert f"{longest}_outbox_publish_attempts_check" in names
    assert max(len(name) for name in names) == 63


@pytest.mark.parametrize(
    ("schema", "journey", "grant_to", "named"),
    [
        ("Tour", "shop", None, "schema 'Tour' is not a plain PostgreSQL name"),
        ("tour", "my-shop", None, "journey 'my-shop' is not a plain PostgreSQL name"),
        ("tour", "1shop", None, "journey '1shop' is not a plain PostgreSQL name"),
        ("tour; drop", "shop", None, "schema 'tour; drop' is not a plain PostgreSQL name"),
        ("", "shop", None, "schema '' is not a plain PostgreSQL name"),
        ("user", "shop", None, "schema 'user' is a reserved word"),
        ("pg_tour", "shop", None, "schema 'pg_tour' starts with 'pg_'"),
        ("t" * 64, "shop", None, "longer than PostgreSQL's 63 characters"),
        ("tour", "s" * 34, None, "journey '" + "s" * 34 + "' is too long"),
        ("tour", "shop", "Shop Role", "grant_to 'Shop Role' is not a plain PostgreSQL name"),
        ("tour", "shop", "select", "grant_to 'select' is a reserved word"),
    ],
)
def test_a_bad_name_is_refused_by_name(
    schema: str, journey: str, grant_to: str | None, named: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(named)) as refused:
        journey_tables_sql(schema, journey, grant_to=grant_to)
    assert isinstance(refused.value, ValueError)


def test_a_name_that_is_not_a_string_is_refused() -> None:
    with pytest.raises(UsageError, match="journey None is not a plain PostgreSQL name"):
        journey_tables_sql("tour", None)  # type: ignore[arg-type]
