"""The service roles' passwords, set by ``saga db setup`` from ``DB_PASSWORD_<ROLE>``.

Every journey service, the coordinator and the maintenance worker log in as a role of
their own (the migrations create them, with no password). A deployment gives each one a
password through the environment; the migrate job sets them, so the services can log in
over a network.

The password never reaches the server in clear: it is hashed here into the
SCRAM-SHA-256 secret PostgreSQL itself would store (as psql's ``\\password`` does), and
the server quotes it into ``ALTER ROLE`` with ``format('%I', '%L')``. The server's
statement log and ``pg_stat_statements`` (which the compose stack loads, and which keeps
utility statements verbatim) see only the secret, and this module logs neither.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import stringprep
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import asyncpg

from saga.errors import ConfigurationError
from saga.settings import to_plain_url
from saga.store.errors import database_errors

# The coordinator's LOGIN role (created by the first migration) and the maintenance
# worker's (revision 20261203130000). The journeys' roles are named by their services
# (``JourneyService.database_role``).
COORDINATOR_ROLE = "austa_saga_coordinator"
WORKER_ROLE = "austa_saga_worker"

PASSWORD_VARIABLE_PREFIX = "DB_PASSWORD_"  # noqa: S105 - a variable name, not a password

# PostgreSQL 15's defaults for the secrets it builds (SCRAM_DEFAULT_ITERATIONS and
# SCRAM_DEFAULT_SALT_LEN); a login costs the server one PBKDF2 of this many rounds.
SCRAM_ITERATIONS = 4096
SCRAM_SALT_BYTES = 16


@dataclass(frozen=True)
class RolePassword:
    """One service role and the password its variable gave (None: the variable is unset)."""

    role: str
    variable: str
    password: str | None = field(default=None, repr=False)


def service_roles(journey_roles: Iterable[str]) -> list[str]:
    """The LOGIN roles a deployment gives passwords to: the journeys', the coordinator's
    and the worker's, sorted, each once."""
    return sorted({*journey_roles, COORDINATOR_ROLE, WORKER_ROLE})


def password_variable(role: str) -> str:
    """``austa_care_journey`` → ``DB_PASSWORD_AUSTA_CARE_JOURNEY``."""
    return PASSWORD_VARIABLE_PREFIX + role.upper()


def read_passwords(
    roles: Sequence[str], environ: Mapping[str, str], *, required: bool
) -> list[RolePassword]:
    """Each role's password from ``environ``; a blank value counts as unset.

    With ``required`` (production) an unset variable is a
    :class:`~saga.errors.ConfigurationError` naming every one missing, raised before
    anything is changed: a service left without its password would only fail later, at
    its first login.
    """
    found = []
    for role in roles:
        variable = password_variable(role)
        value = environ.get(variable, "")
        found.append(RolePassword(role, variable, value if value.strip() else None))
    missing = [entry.variable for entry in found if entry.password is None]
    if required and missing:
        raise ConfigurationError(
            f"{', '.join(missing)} must be set when APP_ENV=production "
            "(the password of each service's database role)"
        )
    return found


async def apply_passwords(database_url: str, passwords: Iterable[RolePassword]) -> list[str]:
    """Set the password of every role in ``passwords`` that has one, in one transaction;
    return those roles. Running it again with the same passwords changes only the salt.

    Needs a login with CREATEROLE (the database owner of a deployment, or a superuser).
    """
    wanted = [(entry.role, entry.password) for entry in passwords if entry.password is not None]
    if not wanted:
        return []
    with database_errors():
        # A plain driver connection: the engine's pool logs statements in development.
        conn = await asyncpg.connect(to_plain_url(database_url))
        try:
            async with conn.transaction():
                for role, password in wanted:
                    await conn.execute(await alter_role_statement(conn, role, password))
        finally:
            await conn.close()
    return [role for role, _ in wanted]


async def alter_role_statement(conn: asyncpg.Connection, role: str, password: str) -> str:
    """The ``ALTER ROLE`` giving ``role`` ``password``: quoted by the server, and holding
    the SCRAM secret, never the password itself."""
    statement: str = await conn.fetchval(
        "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)",
        role,
        scram_secret(password),
    )
    return statement


def scram_secret(
    password: str, *, salt: bytes | None = None, iterations: int = SCRAM_ITERATIONS
) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for ``password`` (RFC 5802 / 7677):
    ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, base64 parts."""
    salt = os.urandom(SCRAM_SALT_BYTES) if salt is None else salt
    salted = hashlib.pbkdf2_hmac("sha256", _prepare(password), salt, iterations)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _prepare(password: str) -> bytes:
    """The bytes PostgreSQL hashes: SASLprep (RFC 4013) as ``pg_saslprep`` applies it.

    ASCII is used as it is; otherwise non-ASCII spaces become spaces, the "commonly mapped
    to nothing" characters go, and the rest is NFKC-normalized. A password SASLprep
    prohibits (control characters, unassigned code points, bad bidirectional text, or
    nothing left after mapping) is used unchanged, as the server does; the checks run on
    the mapped text before normalization, as in ``pg_saslprep``.
    """
    raw = password.encode()
    if password.isascii():
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(char) else char
        for char in password
        if not stringprep.in_table_b1(char)
    )
    if not mapped or any(_prohibited(char) for char in mapped):
        return raw
    if any(stringprep.in_table_d1(char) for char in mapped) and (
        any(stringprep.in_table_d2(char) for char in mapped)
        or not stringprep.in_table_d1(mapped[0])
        or not stringprep.in_table_d1(mapped[-1])
    ):
        return raw
    return unicodedata.normalize("NFKC", mapped).encode()


def _prohibited(char: str) -> bool:
    return (
        stringprep.in_table_a1(char)
        or stringprep.in_table_c12(char)
        or stringprep.in_table_c21_c22(char)
        or stringprep.in_table_c3(char)
        or stringprep.in_table_c4(char)
        or stringprep.in_table_c5(char)
        or stringprep.in_table_c6(char)
        or stringprep.in_table_c7(char)
        or stringprep.in_table_c8(char)
        or stringprep.in_table_c9(char)
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")
