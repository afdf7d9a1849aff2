"""The console's sign-in tokens against the real PostgreSQL: made, checked, listed and
revoked by ``saga.web.tokens`` and by ``saga web token ...`` run as an operator runs it.

The migrated database is shared by the run, so every test names its tokens uniquely.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest

from saga.cli import main
from saga.errors import ConfigurationError, InsufficientPrivilege
from saga.settings import Settings
from saga.store import Database
from saga.store.driver import DriverConnection
from saga.web import tokens
from saga.web.tokens import Role, WebToken

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_ROLE = "austa_saga_coordinator"
T = TypeVar("T")


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def run(database: Database, work: Callable[[DriverConnection], Awaitable[T]]) -> T:
    return await database.run_driver(work, name="tests.web_tokens")


async def as_console(database: Database, work: Callable[[DriverConnection], Awaitable[T]]) -> T:
    """``work`` with only the console's rights (it connects as the coordinator's role)."""

    async def unit(conn: DriverConnection) -> T:
        await conn.execute(f"SET LOCAL ROLE {CONSOLE_ROLE}")
        return await work(conn)

    return await database.run_driver(unit, name="tests.web_tokens.console")


async def create(
    database: Database,
    name: str,
    *,
    role: Role = Role.VIEWER,
    expires_in: timedelta = timedelta(days=1),
    now: datetime | None = None,
) -> tuple[WebToken, str]:
    return await run(
        database,
        lambda conn: tokens.create_token(
            conn, name=name, role=role, expires_in=expires_in, created_by="tester", now=now
        ),
    )


async def authenticate(database: Database, secret: str, now: datetime) -> WebToken | None:
    return await as_console(database, lambda conn: tokens.authenticate(conn, secret, now=now))


async def by_id(database: Database, token_id: uuid.UUID, now: datetime) -> WebToken | None:
    return await as_console(database, lambda conn: tokens.token_by_id(conn, token_id, now=now))


async def test_a_new_token_signs_in_and_is_marked_used(database: Database) -> None:
    name = unique("alice")
    token, secret = await create(database, f"  {name} ", role=Role.OPERATOR)
    assert token.name == name
    assert token.role is Role.OPERATOR
    assert token.can_act
    assert token.created_by == "tester"
    assert token.last_used_at is None
    assert token.revoked_at is None
    assert secret.startswith("austa_")
    assert len(secret) == 49

    now = datetime.now(UTC)
    signed_in = await authenticate(database, secret, now)
    assert signed_in is not None
    assert signed_in.id == token.id
    assert signed_in.last_used_at == now
    assert signed_in.usable(now)
    # Pasted with the newline a terminal adds, it still signs in.
    assert await authenticate(database, f"{secret}\n", now) is not None

    found = await by_id(database, token.id, now)
    assert found is not None
    assert found.last_used_at == now


async def test_a_viewer_cannot_act(database: Database) -> None:
    token, _ = await create(database, unique("viewer"))
    assert token.role is Role.VIEWER
    assert not token.can_act


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "   ",
        "garbage",
        "austa_",
        "austa_" + "A" * 43,
        "austa_" + "x" * 100_000,
        "austa_\udcff",
        "austa_\x00",
        "austa_é",
        "' OR 1=1 --",
    ],
)
async def test_anything_but_a_tokens_secret_signs_nobody_in(
    database: Database, secret: str
) -> None:
    await create(database, unique("someone"))
    assert await authenticate(database, secret, datetime.now(UTC)) is None


async def test_a_wrong_secret_signs_nobody_in(database: Database) -> None:
    _, secret = await create(database, unique("bob"))
    other = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    assert await authenticate(database, other, datetime.now(UTC)) is None


async def test_an_expired_token_signs_nobody_in(database: Database) -> None:
    token, secret = await create(database, unique("carol"), expires_in=timedelta(hours=1))
    after = token.expires_at + timedelta(seconds=1)
    assert await authenticate(database, secret, after) is None
    assert await by_id(database, token.id, after) is None
    assert not token.usable(after)
    assert token.state(after) == "expired"
    # Made long ago and expired since, by the clock of the database's rows.
    _old, old_secret = await create(
        database,
        unique("dave"),
        expires_in=timedelta(days=1),
        now=datetime.now(UTC) - timedelta(days=2),
    )
    assert await authenticate(database, old_secret, datetime.now(UTC)) is None


async def test_a_revoked_token_signs_nobody_in_and_ends_its_sessions(
    database: Database,
) -> None:
    token, secret = await create(database, unique("erin"))
    now = datetime.now(UTC)
    assert await by_id(database, token.id, now) is not None  # a session is open

    revoked = await run(database, lambda conn: tokens.revoke_tokens(conn, str(token.id), now=now))
    assert [t.id for t in revoked] == [token.id]
    assert revoked[0].revoked_at == now
    later = now + timedelta(seconds=1)
    assert await authenticate(database, secret, later) is None
    assert await by_id(database, token.id, later) is None
    assert revoked[0].state(later) == "revoked"
    # Revoking it again revokes nothing.
    again = await run(database, lambda conn: tokens.revoke_tokens(conn, str(token.id), now=later))
    assert again == []


async def test_only_the_secrets_hash_is_stored(database: Database) -> None:
    token, secret = await create(database, unique("frank"))
    row = await run(
        database,
        lambda conn: conn.fetchrow(
            "SELECT token_hash, row_to_json(t)::text AS whole "
            "FROM shared.saga_web_token t WHERE id = $1",
            token.id,
        ),
    )
    assert row is not None
    assert row["token_hash"] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in row["whole"]
    assert secret.removeprefix("austa_") not in row["whole"]
    assert secret not in repr(token)


async def test_list_shows_every_token_without_secrets(database: Database) -> None:
    name = unique("grace")
    first, first_secret = await create(database, name)
    second, _ = await create(database, name, role=Role.OPERATOR)
    listed = await as_console(database, tokens.list_tokens)
    mine = [t for t in listed if t.name == name]
    assert [t.id for t in mine] == [first.id, second.id]
    assert [t.role for t in mine] == [Role.VIEWER, Role.OPERATOR]
    assert first_secret not in repr(listed)


async def test_revoking_a_name_revokes_its_active_tokens_only(database: Database) -> None:
    name, other = unique("heidi"), unique("ivan")
    now = datetime.now(UTC)
    one, _ = await create(database, name)
    two, _ = await create(database, name, role=Role.OPERATOR)
    expired, _ = await create(
        database, name, expires_in=timedelta(hours=1), now=now - timedelta(hours=2)
    )
    _kept, kept_secret = await create(database, other)

    revoked = await run(database, lambda conn: tokens.revoke_tokens(conn, f" {name} ", now=now))
    assert sorted(t.id for t in revoked) == sorted([one.id, two.id])
    assert all(t.revoked_at == now for t in revoked)
    assert expired.id not in {t.id for t in revoked}
    assert await authenticate(database, kept_secret, now) is not None

    none = await run(database, lambda conn: tokens.revoke_tokens(conn, name, now=now))
    assert none == []
    unknown = await run(
        database, lambda conn: tokens.revoke_tokens(conn, str(uuid.uuid4()), now=now)
    )
    assert unknown == []


async def test_a_name_that_looks_like_an_id_is_revoked_by_name(database: Database) -> None:
    name = str(uuid.uuid4())
    token, _ = await create(database, name)
    now = datetime.now(UTC)
    revoked = await run(database, lambda conn: tokens.revoke_tokens(conn, name, now=now))
    assert [t.id for t in revoked] == [token.id]


async def test_the_console_may_not_make_tokens(database: Database) -> None:
    with pytest.raises(InsufficientPrivilege):
        await as_console(
            database,
            lambda conn: tokens.create_token(
                conn,
                name=unique("mallory"),
                role=Role.OPERATOR,
                expires_in=timedelta(days=1),
                created_by=None,
            ),
        )


@pytest.mark.parametrize(
    ("name", "expires_in", "words"),
    [
        ("", timedelta(days=1), "1..100 characters"),
        ("   ", timedelta(days=1), "1..100 characters"),
        ("x" * 101, timedelta(days=1), "1..100 characters"),
        ("two\nlines", timedelta(days=1), "control characters"),
        ("ok", timedelta(0), "at most 366 days"),
        ("ok", timedelta(days=-1), "at most 366 days"),
        ("ok", timedelta(days=367), "at most 366 days"),
    ],
)
async def test_a_bad_name_or_lifetime_is_refused(
    database: Database, name: str, expires_in: timedelta, words: str
) -> None:
    with pytest.raises(ConfigurationError, match=words):
        await create(database, name, expires_in=expires_in)


def test_role_parse_names_the_bad_value_and_the_choices() -> None:
    assert Role.parse(" Operator ", "--role") is Role.OPERATOR
    with pytest.raises(
        ConfigurationError, match=r"--role: expected viewer or operator; got 'admin'"
    ):
        Role.parse("admin", "--role")


# --- the CLI, as an operator runs it ------------------------------------------------------


def saga(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.update(APP_ENV="test", DATABASE_URL=database_url, SAGA_ACTOR="ops.tester")
    return subprocess.run(
        [sys.executable, "-m", "saga", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        check=False,
    )


@pytest.mark.embedded
def test_the_cli_shows_a_secret_once_and_never_again(
    settings: Settings, migrated_database_url: str
) -> None:
    name = unique("judy")
    created = saga(
        "web", "token", "create", "--name", name, "--role", "operator", "--expires-in", "7d",
        database_url=migrated_database_url,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    secret_lines = [line for line in created.stdout.splitlines() if line.startswith("secret: ")]
    assert len(secret_lines) == 1
    secret = secret_lines[0].removeprefix("secret: ")
    assert created.stdout.count(secret) == 1
    assert secret not in created.stderr
    assert "shown only once" in created.stdout
    assert "sign-in page" in created.stdout

    token = asyncio.run(_sign_in(settings, migrated_database_url, secret))
    assert token is not None
    assert token.name == name
    assert token.role is Role.OPERATOR
    assert token.created_by == "ops.tester"
    assert timedelta(days=7) - timedelta(minutes=5) < token.expires_at - token.created_at
    assert token.expires_at - token.created_at <= timedelta(days=7)

    as_json = saga(
        "web", "token", "create", "--name", name, "--role", "viewer", "--json",
        database_url=migrated_database_url,
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["secret"].startswith("austa_")
    assert document["role"] == "viewer"
    assert document["state"] == "active"
    assert "shown only once" in as_json.stderr
    # The default lifetime is WEB_TOKEN_DAYS (90).
    lifetime = datetime.fromisoformat(document["expires_at"]) - datetime.fromisoformat(
        document["created_at"]
    )
    assert lifetime == timedelta(days=90)

    for listing in (
        saga("web", "token", "list", database_url=migrated_database_url),
        saga("web", "token", "list", "--json", database_url=migrated_database_url),
    ):
        assert listing.returncode == 0, listing.stderr
        assert name in listing.stdout
        for never in (secret, document["secret"], hashlib.sha256(secret.encode()).hexdigest()):
            assert never not in listing.stdout + listing.stderr
    listed = json.loads(listing.stdout)["tokens"]
    assert {t["role"] for t in listed if t["name"] == name} == {"operator", "viewer"}
    assert all("secret" not in t and "token_hash" not in t for t in listed)

    revoked = saga("web", "token", "revoke", name, database_url=migrated_database_url)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked 2 tokens" in revoked.stdout
    assert asyncio.run(_sign_in(settings, migrated_database_url, secret)) is None

    bad_role = saga(
        "web", "token", "create", "--name", name, "--role", "root",
        database_url=migrated_database_url,
    )  # fmt: skip
    assert bad_role.returncode == 2
    assert bad_role.stderr.strip().splitlines() == [
        "saga: error: --role: expected viewer or operator; got 'root'"
    ]

    again = saga("web", "token", "revoke", name, database_url=migrated_database_url)
    assert again.returncode == 1
    assert again.stderr.strip().splitlines() == [
        f"saga: error: no active token has the id or name {name!r}"
    ]


async def _sign_in(settings: Settings, url: str, secret: str) -> WebToken | None:
    database = Database.from_settings(settings, url=url, application_name="tests")
    try:
        return await authenticate(database, secret, datetime.now(UTC))
    finally:
        await database.dispose()


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--role", "admin"], "saga: error: --role: expected viewer or operator; got 'admin'"),
        (["--role", "viewer", "--expires-in", "forever"], "saga: error: --expires-in: expected"),
        (["--role", "viewer", "--expires-in=-1d"], "saga: error: --expires-in: a duration"),
        (["--role", "viewer", "--expires-in", "400d"], "at most 366 days"),
        (["--role", "viewer", "--name", " "], "saga: error: --name: a token's name"),
    ],
)
def test_bad_flags_stop_the_cli_with_one_line(
    flags: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before the database is touched: no DATABASE_URL is needed to see it.
    code = main(["web", "token", "create", "--name", "x", *flags])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1
    assert words in err
