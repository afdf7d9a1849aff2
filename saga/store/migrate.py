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
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from saga.errors import ConfigurationError, MigrationNameError

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


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str = "-1") -> None:
    command.downgrade(alembic_config(database_url), revision)


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
