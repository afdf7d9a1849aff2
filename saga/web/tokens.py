"""The console's personal sign-in tokens (``shared.saga_web_token``).

``saga web token create`` makes one and shows its secret once; the console signs a person
in with it (:func:`authenticate`) and re-checks the token behind a session on every
request (:func:`token_by_id`), so revoking a token or letting it expire ends its sessions
at once. The console connects as the coordinator's role, which may only read and update
the table: every function it calls here only reads and updates.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from saga.errors import ConfigurationError
from saga.store.connection import Row
from saga.store.driver import DriverConnection

SECRET_PREFIX = "austa_"  # noqa: S105 - a public marker every secret starts with
"""Marks a console token wherever it is pasted or leaks (secret scanners key on it)."""
MAX_SECRET_LENGTH = 100
"""A real secret is 49 characters; anything much longer is refused before it is hashed."""
MAX_NAME_LENGTH = 100
MAX_CREATED_BY_LENGTH = 200
MAX_LIFETIME = timedelta(days=366)

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Role(StrEnum):
    VIEWER = "viewer"
    """Reads sagas, their timelines and statistics."""
    OPERATOR = "operator"
    """Also acts on sagas (retry, compensate, skip, abort, signal)."""

    @classmethod
    def parse(cls, text: str, where: str) -> Role:
        """``text`` as a role; ``where`` (``--role``) names the input in the error."""
        try:
            return cls(text.strip().lower())
        except ValueError:
            choices = " or ".join(role.value for role in cls)
            raise ConfigurationError(f"{where}: expected {choices}; got {text!r}") from None


@dataclass(frozen=True, slots=True)
class WebToken:
    """One token as the console and the CLI see it: never its secret nor its hash."""

    id: uuid.UUID
    name: str
    role: Role
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    """When it last signed someone in (a session's requests do not count)."""
    created_by: str | None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at

    @property
    def can_act(self) -> bool:
        return self.role is Role.OPERATOR

    def state(self, now: datetime) -> str:
        """``active``, ``expired`` or ``revoked``, as ``saga web token list`` shows it."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if now < self.expires_at else "expired"


def check_name(name: str, where: str) -> str:
    """The name stripped; 1..100 characters and on one line (it is shown in tables)."""
    cleaned = name.strip()
    if not 1 <= len(cleaned) <= MAX_NAME_LENGTH:
        raise ConfigurationError(
            f"{where}: a token's name must have 1..{MAX_NAME_LENGTH} characters; got {len(cleaned)}"
        )
    if _CONTROL.search(cleaned):
        raise ConfigurationError(f"{where}: a token's name must not hold control characters")
    return cleaned


def check_lifetime(expires_in: timedelta, where: str) -> timedelta:
    if not timedelta(0) < expires_in <= MAX_LIFETIME:
        raise ConfigurationError(
            f"{where}: a token must expire after a positive time of at most "
            f"{MAX_LIFETIME.days} days; got {expires_in}"
        )
    return expires_in


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


_COLUMNS = "id, name, role, created_at, expires_at, revoked_at, last_used_at, created_by"

_INSERT = f"""
INSERT INTO shared.saga_web_token (name, role, token_hash, expires_at, created_by, created_at)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {_COLUMNS}
"""


async def create_token(
    conn: DriverConnection,
    *,
    name: str,
    role: Role,
    expires_in: timedelta,
    created_by: str | None,
    now: datetime | None = None,
) -> tuple[WebToken, str]:
    """Store a new token and return it with its secret, which exists nowhere else.

    Only ``sha256(secret)`` is stored. A slow password hash (bcrypt, argon2) exists to
    make guessing from a dictionary expensive; these secrets are 256 random bits, so there
    is no dictionary, and a leaked table is of no use. A fast hash is then as safe and
    lets the console find a token by its hash in one indexed lookup instead of trying a
    slow hash against every row. Looking up by hash is safe from timing attacks too: what
    the index comparison could reveal is how a guess's *hash* is ordered among the stored
    ones, which says nothing about any secret.
    """
    moment = now or datetime.now(UTC)
    cleaned = check_name(name, "name")
    check_lifetime(expires_in, "expires_in")
    by = (created_by or "").strip()[:MAX_CREATED_BY_LENGTH] or None
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = await conn.fetchrow(
        _INSERT, cleaned, role.value, hash_secret(secret), moment + expires_in, by, moment
    )
    assert row is not None  # INSERT ... RETURNING returns its row
    return _token(row), secret


_AUTHENTICATE = f"""
UPDATE shared.saga_web_token SET last_used_at = $2
WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > $2 AND deleted_at IS NULL
RETURNING {_COLUMNS}
"""


async def authenticate(conn: DriverConnection, secret: str, *, now: datetime) -> WebToken | None:
    """The usable token whose secret this is, its ``last_used_at`` set to ``now``; None
    for anything else, garbage included (whatever a sign-in form was sent)."""
    candidate = secret.strip()
    if (
        not candidate.startswith(SECRET_PREFIX)
        or len(candidate) > MAX_SECRET_LENGTH
        or not candidate.isascii()
    ):
        return None
    row = await conn.fetchrow(_AUTHENTICATE, hash_secret(candidate), now)
    return None if row is None else _token(row)


_BY_ID = f"""
SELECT {_COLUMNS} FROM shared.saga_web_token
WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2 AND deleted_at IS NULL
"""


async def token_by_id(
    conn: DriverConnection, token_id: uuid.UUID, *, now: datetime
) -> WebToken | None:
    """The token behind a session if it is still usable, else None: the console asks on
    every request, so a revoked or expired token's sessions end at once. A read only:
    a write per page view would cost more than ``last_used_at`` is worth."""
    row = await conn.fetchrow(_BY_ID, token_id, now)
    return None if row is None else _token(row)


_LIST = f"""
SELECT {_COLUMNS} FROM shared.saga_web_token
WHERE deleted_at IS NULL
ORDER BY created_at, id
"""


async def list_tokens(conn: DriverConnection) -> list[WebToken]:
    """Every token, revoked and expired ones included, oldest first."""
    return [_token(row) for row in await conn.fetch(_LIST)]


# $1 is NULL unless the text is a UUID, and `id = NULL` matches nothing: a name that
# happens to look like a UUID is still revoked by name.
_REVOKE = f"""
UPDATE shared.saga_web_token SET revoked_at = $3
WHERE (id = $1 OR name = $2)
  AND revoked_at IS NULL AND expires_at > $3 AND deleted_at IS NULL
RETURNING {_COLUMNS}
"""


async def revoke_tokens(
    conn: DriverConnection, name_or_id: str, *, now: datetime
) -> list[WebToken]:
    """Revoke the active token with this id, or every active token with this name; the
    tokens revoked (none: an empty list). Expired and already revoked ones are left."""
    text = name_or_id.strip()
    try:
        token_id: uuid.UUID | None = uuid.UUID(text)
    except ValueError:
        token_id = None
    rows = await conn.fetch(_REVOKE, token_id, text, now)
    return sorted((_token(row) for row in rows), key=lambda t: (t.created_at, t.id))


def _token(row: Row) -> WebToken:
    return WebToken(
        id=row["id"],
        name=row["name"],
        role=Role(row["role"]),
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        revoked_at=row["revoked_at"],
        last_used_at=row["last_used_at"],
        created_by=row["created_by"],
    )
