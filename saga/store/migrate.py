"""The migration commands behind ``saga db``: thin, typed wrappers over Alembic.

Revisions live in the ``migrations`` package (``migrations/versions``), named
``YYYYMMDDHHMMSS_<add|update|remove>_<what>.py`` with the timestamp as revision id.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga.errors import ConfigurationError, MigrationNameError, SagaError
from saga.store.errors import DATABASE_ERRORS, translate

NAME_PATTERN = re.compile(r"^(add|update|remove)_[a-z0-9]+(_[a-z0-9]+)*$")
FILE_TEMPLATE = "%%(rev)s_%%(slug)s"


def migrations_dir() -> Path:
    """Where the ``migrations`` package is (editable checkout or installed wheel)."""
    spec = importlib.util.find_spec("migrations")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError("the 'migrations' package is not installed with the engine")
    return Path(next(iter(spec.submodule_search_locations)))


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.set_main_option("file_template", FILE_TEMPLATE)
    config.set_main_option("truncate_slug_length", "80")
    config.set_main_option("path_separator", "os")
    config.attributes["database_url"] = database_url
    return config


class MigrationFailed(SagaError):
    """A revision's SQL failed; the database is left at the last revision that committed
    (each revision commits on its own)."""


@dataclass
class MigrationProgress:
    """Where a run stands, kept by ``migrations/env.py`` as it goes, so that a failure can
    name the revision it happened in."""

    connected: bool = False
    at: str | None = None
    """The revision the database is at: where the run began, then after each step."""


def upgrade(database_url: str, revision: str = "head") -> None:
    config = alembic_config(database_url)
    with _naming_the_failed_revision(config, upgrading=True):
        command.upgrade(config, revision)


def downgrade(database_url: str, revision: str = "-1") -> None:
    config = alembic_config(database_url)
    with _naming_the_failed_revision(config, upgrading=False):
        command.downgrade(config, revision)


@contextlib.contextmanager
def _naming_the_failed_revision(config: Config, *, upgrading: bool) -> Iterator[None]:
    """An SQL error inside a revision becomes one line that names the revision and the
    error (``migration 20261203090000 (add console tables) failed: ...``), instead of a
    page of SQLAlchemy traceback."""
    progress = MigrationProgress()
    config.attributes["progress"] = progress
    try:
        yield
    except DATABASE_ERRORS as exc:
        error = translate(exc)
        if not progress.connected:
            raise error from exc
        failed = _failed_revision(config, progress.at, upgrading=upgrading)
        where = "a migration" if failed is None else f"migration {failed}"
        state = f" [SQLSTATE {error.sqlstate}]" if error.sqlstate else ""
        raise MigrationFailed(
            f"{where} failed: {error}{state}; the database is at "
            f"{progress.at or 'base'}, the last revision that committed"
        ) from exc


def _failed_revision(config: Config, at: str | None, *, upgrading: bool) -> str | None:
    """The revision whose SQL failed: going up, the one after ``at``; going down, ``at``
    itself (the one being undone)."""
    script = ScriptDirectory.from_config(config)
    if not upgrading:
        revision = script.get_revision(at) if at else None
    else:
        revision = next(
            (r for r in script.walk_revisions() if r.down_revision == at),
            None,
        )
    if revision is None:
        return None
    title = (revision.doc or "").splitlines()[0].strip() if revision.doc else ""
    return f"{revision.revision} ({title})" if title else revision.revision


def offline_sql(from_revision: str | None = None, to_revision: str = "head") -> str:
    """The SQL an upgrade would run, for a DBA to review, without touching a database."""
    buffer = io.StringIO()
    config = alembic_config(None)
    config.output_buffer = buffer
    target = f"{from_revision}:{to_revision}" if from_revision else to_revision
    command.upgrade(config, target, sql=True)
    return buffer.getvalue()


def offline_downgrade_sql(from_revision: str, to_revision: str) -> str:
    buffer = io.StringIO()
    config = alembic_config(None)
    config.output_buffer = buffer
    command.downgrade(config, f"{from_revision}:{to_revision}", sql=True)
    return buffer.getvalue()


def new_revision(
    name: str, *, now: datetime | None = None, versions_dir: Path | None = None
) -> Path:
    """Create an empty revision file ``<timestamp>_<name>.py`` on top of the current head.

    ``versions_dir`` writes it elsewhere than ``migrations/versions`` (for tests and
    drafts); the history it extends is still the project's.
    """
    if not NAME_PATTERN.match(name):
        raise MigrationNameError(
            f"migration name {name!r} must be snake_case and start with add_, update_ "
            "or remove_ (for example add_claim_status_index)"
        )
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d%H%M%S")
    config = alembic_config(None)
    if versions_dir is not None:
        project_versions = migrations_dir() / "versions"
        config.set_main_option(
            "version_locations", os.pathsep.join([str(project_versions), str(versions_dir)])
        )
    with contextlib.redirect_stdout(io.StringIO()):
        script = command.revision(
            config,
            message=name.replace("_", " "),
            rev_id=stamp,
            version_path=str(versions_dir) if versions_dir is not None else None,
        )
    if script is None or isinstance(script, list):
        raise ConfigurationError(f"alembic created no single revision for {name!r}")
    return Path(script.path)


async def current_revision(conn: AsyncConnection) -> str | None:
    """The revision the database is at, or None when it has never been migrated (or was
    downgraded to base)."""
    if not await conn.scalar(text("SELECT to_regclass('public.alembic_version') IS NOT NULL")):
        return None
    version: str | None = await conn.scalar(
        text("SELECT version_num FROM public.alembic_version LIMIT 1")
    )
    return version


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config(None)).get_current_head()
    if head is None:
        raise ConfigurationError("there are no migrations")
    return head
