"""The DDL of a journey's inbox and outbox, in the shape the participant and the worker use.

The migrations built the four journeys' tables in several steps (``migrations/_ddl.py``,
then ``available_at`` and its index in revision 20261125160000); this is the shape they
add up to, in one piece, for a journey the migrations do not know. The integration test
``tests/integration/test_journey_tables.py`` compares it, through the catalog, with the
migrated ``care_journey`` tables: a migration that changes the journeys' inboxes or
outboxes fails that test until this module follows.
"""

from __future__ import annotations

import re

from saga.errors import UsageError
from saga.store.inbox import JourneyTables

# Unquoted identifiers only: the participant and the worker interpolate these names into
# their SQL without quoting them.
_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")

# PostgreSQL's NAMEDATALEN - 1: a longer name would be silently truncated, and two
# journeys' constraints could end up with one name.
_LONGEST_NAME = 63

# The longest name derived from the prefix: ``<prefix>_outbox_publish_attempts_check``.
_LONGEST_SUFFIX = len("_outbox_publish_attempts_check")

# pg_get_keywords() of categories R (reserved) and T (reserved, may name a function or a
# type) in PostgreSQL 15 to 18 (16 added system_user): none of them may name a schema or a
# role unquoted. tests/integration/test_journey_tables.py checks the server's are here.
_RESERVED_WORDS_TEXT = """
    all analyse analyze and any array as asc asymmetric authorization binary both case cast
    check collate collation column concurrently constraint create cross current_catalog
    current_date current_role current_schema current_time current_timestamp current_user
    default deferrable desc distinct do else end except false fetch for foreign freeze from
    full grant group having ilike in initially inner intersect into is isnull join lateral
    leading left like limit localtime localtimestamp natural not notnull null offset on only
    or order outer overlaps placing primary references returning right select session_user
    similar some symmetric system_user table tablesample then to trailing true union unique
    user using variadic verbose when where window with
"""
RESERVED_WORDS = frozenset(_RESERVED_WORDS_TEXT.split())


def journey_tables_sql(schema: str, journey: str, *, grant_to: str | None = None) -> list[str]:
    """The statements that create ``<schema>.<journey>_inbox`` and ``_outbox``.

    ``journey`` is the tables' prefix: the participant's ``table_prefix``, or its journey
    name when it has none. The tables, their constraints, indexes and ``updated_at``
    triggers are the current shape of every journey's (the migrated
    ``care_journey.care_inbox`` and ``care_outbox``). Each statement may run again: it
    creates only what is missing (a trigger is replaced). The schema must exist, and
    ``shared.set_updated_at()`` too (the first migration creates it).

    With ``grant_to``, the last statement lets that role (the journey service's login
    role) read and write both tables; it still needs ``USAGE`` on the schema.

    Raises :class:`~saga.UsageError` naming the argument that cannot name the tables.
    """
    _check_name("schema", schema)
    _check_name("journey", journey)
    if len(journey) + _LONGEST_SUFFIX > _LONGEST_NAME:
        raise UsageError(
            f"journey {journey!r} is too long to prefix the tables' names: at most "
            f"{_LONGEST_NAME - _LONGEST_SUFFIX} characters (PostgreSQL names are at most "
            f"{_LONGEST_NAME}); give the participant a shorter table_prefix"
        )
    tables = JourneyTables.of(schema, journey)
    statements = [*_inbox(tables.inbox, journey), *_outbox(tables.outbox, journey)]
    if grant_to is not None:
        _check_name("grant_to", grant_to)
        statements.append(
            f"GRANT SELECT, INSERT, UPDATE, DELETE ON {tables.inbox}, {tables.outbox} TO {grant_to}"
        )
    return statements


def _check_name(argument: str, value: object) -> None:
    if not isinstance(value, str) or not _IDENTIFIER.match(value):
        raise UsageError(
            f"{argument} {value!r} is not a plain PostgreSQL name: lower-case letters, "
            "digits and underscores, not starting with a digit"
        )
    if value in RESERVED_WORDS:
        raise UsageError(f"{argument} {value!r} is a reserved word in PostgreSQL")
    if value.startswith("pg_"):
        raise UsageError(f"{argument} {value!r} starts with 'pg_', which PostgreSQL reserves")
    if len(value) > _LONGEST_NAME:
        raise UsageError(
            f"{argument} {value!r} is longer than PostgreSQL's {_LONGEST_NAME} characters"
        )


# Columns every table carries (the database guide's), then what migrations added since.
_AUDIT_COLUMNS = """
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    deleted_at timestamptz"""


def _inbox(table: str, prefix: str) -> list[str]:
    name = f"{prefix}_inbox"
    return [
        f"""CREATE TABLE IF NOT EXISTS {table} (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    message_id uuid NOT NULL,
    saga_id uuid NOT NULL,
    step_name text NOT NULL,
    action text NOT NULL,
    attempt integer NOT NULL,
    reply jsonb NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),{_AUDIT_COLUMNS},
    CONSTRAINT {name}_pkey PRIMARY KEY (id),
    CONSTRAINT {name}_message_id_key UNIQUE (message_id),
    CONSTRAINT {name}_attempt_check CHECK (attempt >= 1)
)""",
        # Inbox retention deletes by age and by finished saga.
        f"CREATE INDEX IF NOT EXISTS {name}_processed_at_idx ON {table} (processed_at)",
        f"CREATE INDEX IF NOT EXISTS {name}_saga_id_idx ON {table} (saga_id)",
        _updated_at_trigger(table, name),
    ]


def _outbox(table: str, prefix: str) -> list[str]:
    name = f"{prefix}_outbox"
    return [
        f"""CREATE TABLE IF NOT EXISTS {table} (
    id uuid NOT NULL DEFAULT gen_random_uuid(),
    message_id uuid NOT NULL,
    topic text NOT NULL,
    message_key text NOT NULL,
    payload jsonb NOT NULL,
    headers jsonb NOT NULL DEFAULT '{{}}'::jsonb,
    published_at timestamptz,
    publish_attempts integer NOT NULL DEFAULT 0,
    last_error text,{_AUDIT_COLUMNS},
    available_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT {name}_pkey PRIMARY KEY (id),
    CONSTRAINT {name}_message_id_key UNIQUE (message_id),
    CONSTRAINT {name}_publish_attempts_check CHECK (publish_attempts >= 0)
)""",
        # The relay sweeps only unpublished rows, by when they come due (a retry dispatched
        # with backoff is committed at once but due later); retention scans published ones.
        f"CREATE INDEX IF NOT EXISTS {name}_unpublished_idx ON {table} (available_at) "
        "WHERE published_at IS NULL",
        f"CREATE INDEX IF NOT EXISTS {name}_published_at_idx ON {table} (published_at) "
        "WHERE published_at IS NOT NULL",
        _updated_at_trigger(table, name),
    ]


def _updated_at_trigger(table: str, name: str) -> str:
    return (
        f"CREATE OR REPLACE TRIGGER {name}_set_updated_at BEFORE UPDATE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION shared.set_updated_at()"
    )
