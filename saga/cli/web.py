"""``saga web``: serve the operators' web console; ``saga web token create|list|revoke``:
the personal tokens people sign in to it with.

A token's secret is printed once, by ``create``, and stored nowhere (the database keeps
its SHA-256). ``list`` shows every token's state but never a secret nor a hash. The token
commands connect with ``DATABASE_URL``, as its owner; the console itself connects as the
coordinator's role, which may read tokens and mark them used but not make them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog

from saga.cli.act import _login
from saga.errors import ConfigurationError
from saga.logging import configure_logging
from saga.operator.filters import DURATION_FORMS, parse_count, parse_duration
from saga.operator.render import print_json, print_table, utc_text
from saga.settings import Settings, load_settings
from saga.store import Database
from saga.store.driver import DriverConnection
from saga.web import tokens
from saga.web.tokens import Role, WebToken

T = TypeVar("T")

EXIT_NOTHING_REVOKED = 1

log = structlog.get_logger("saga.web")


def add_parser(commands: Any) -> None:
    web = commands.add_parser(
        "web",
        help="serve the operators' web console; manage its sign-in tokens",
        description="Serve the web console on WEB_HOST:WEB_PORT (saga web, or saga web "
        "serve), or create, list and revoke the personal tokens people sign in with.",
    )
    _listen_arguments(web)
    web.set_defaults(handler=_serve)
    actions = web.add_subparsers(dest="web_command", metavar="COMMAND")

    serve = actions.add_parser("serve", help="serve the console (the default)")
    # No defaults of its own, which would overwrite `saga web --port 9 serve`'s.
    _listen_arguments(serve, default=argparse.SUPPRESS)
    serve.set_defaults(handler=_serve)

    token = actions.add_parser("token", help="create, list or revoke sign-in tokens")
    token_actions = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")

    create = token_actions.add_parser(
        "create",
        help="make a token and print its secret, once",
        description="Make a personal sign-in token and print its secret. The secret is "
        "shown only this once: nothing can show it again.",
    )
    create.add_argument("--name", required=True, help="whose token, e.g. a person's login")
    create.add_argument(
        "--role",
        required=True,
        metavar="viewer|operator",
        help="viewer reads; operator also acts on sagas",
    )
    create.add_argument(
        "--expires-in",
        metavar="DURATION",
        help=f"how long it lasts: {DURATION_FORMS}, at most 366d (default $WEB_TOKEN_DAYS, 90d)",
    )
    create.add_argument(
        "--by", default=None, help="who creates it (default: $SAGA_ACTOR, else your login name)"
    )
    _json_flag(create)
    create.set_defaults(handler=_create)

    listing = token_actions.add_parser("list", help="every token and its state (never a secret)")
    _json_flag(listing)
    listing.set_defaults(handler=_list)

    revoke = token_actions.add_parser(
        "revoke",
        help="revoke a token by id, or every active token of a name",
        description="Revoke the active token with this id, or every active token with "
        "this name. Its console sessions end at their next request. Exit 1 if none was "
        "active.",
    )
    revoke.add_argument("name_or_id", metavar="NAME_OR_ID", help="a token's id or name")
    revoke.add_argument(
        "--by", default=None, help="who revokes (default: $SAGA_ACTOR, else your login name)"
    )
    _json_flag(revoke)
    revoke.set_defaults(handler=_revoke)


def _listen_arguments(parser: argparse.ArgumentParser, *, default: Any = None) -> None:
    parser.add_argument(
        "--host", default=default, help="listen on this address (default $WEB_HOST)"
    )
    parser.add_argument("--port", default=default, help="listen on this port (default $WEB_PORT)")


def _json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


# --- saga web [serve] -----------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.host is not None:
        if not args.host.strip():
            raise ConfigurationError("--host must not be empty")
        overrides["web_host"] = args.host.strip()
    if args.port is not None:
        overrides["web_port"] = parse_count(args.port, "--port", low=1, high=65535)
    settings = load_settings(**overrides)
    configure_logging(settings)
    # Refused here, before the app is built: production without WEB_SECRET_KEY.
    settings.web_session_key()

    import uvicorn

    from saga.web.app import create_app

    app = create_app(settings)
    if settings.metrics_port is not None:
        # Sign-ins and actions are counted; Prometheus scrapes them here, as from the
        # other processes (the console's own port serves only signed-in pages, /live
        # and /ready).
        from saga.health import serve_endpoints

        serve_endpoints(settings.metrics_port, None)
    log.info("web_console_starting", host=settings.web_host, port=settings.web_port)
    # uvicorn stops on SIGTERM and SIGINT by itself, finishing requests in hand, and
    # returns: the process then exits 0.
    uvicorn.run(
        app,
        host=settings.web_host,
        port=settings.web_port,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=int(settings.shutdown_timeout_seconds),
    )
    return 0


# --- saga web token ... ---------------------------------------------------------------


def _create(args: argparse.Namespace) -> int:
    # Every flag is checked before the database is touched.
    name = tokens.check_name(args.name, "--name")
    role = Role.parse(args.role, "--role")
    expires_in = (
        None
        if args.expires_in is None
        else tokens.check_lifetime(parse_duration(args.expires_in, "--expires-in"), "--expires-in")
    )
    by = _who(args.by)
    settings = _settings()
    lifetime = expires_in or timedelta(days=settings.web_token_days)

    async def work(conn: DriverConnection) -> tuple[WebToken, str]:
        return await tokens.create_token(
            conn, name=name, role=role, expires_in=lifetime, created_by=by
        )

    token, secret = _run(settings, work, name="cli.web_token_create")
    log.info(
        "web_token_created",
        id=str(token.id),
        name=token.name,
        role=token.role.value,
        expires_at=token.expires_at.isoformat(),
        by=by,
    )
    where = f"http://{settings.web_host}:{settings.web_port}/"
    notice = (
        "This secret is shown only once: keep it now (a password manager), nothing can show "
        f"it again. Sign in by pasting it into the console's sign-in page ({where} when "
        "`saga web` runs with these settings)."
    )
    if args.json:
        print_json({**_document(token, datetime.now(UTC)), "secret": secret})
        print(f"saga: note: {notice}", file=sys.stderr)
        return 0
    print(
        f"created {token.role.value} token {token.name!r} (id {token.id}), "
        f"expires {utc_text(token.expires_at)}"
    )
    print(f"secret: {secret}")
    print(notice)
    return 0


def _list(args: argparse.Namespace) -> int:
    found = _run(_settings(), tokens.list_tokens, name="cli.web_token_list")
    now = datetime.now(UTC)
    _show(found, now, as_json=args.json, empty="no console tokens")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    target = args.name_or_id.strip()
    if not target:
        raise ConfigurationError("NAME_OR_ID must not be empty")
    by = _who(args.by)
    settings = _settings()
    now = datetime.now(UTC)

    async def work(conn: DriverConnection) -> list[WebToken]:
        return await tokens.revoke_tokens(conn, target, now=now)

    revoked = _run(settings, work, name="cli.web_token_revoke")
    for token in revoked:
        log.info(
            "web_token_revoked", id=str(token.id), name=token.name, role=token.role.value, by=by
        )
    if args.json:
        print_json({"revoked": [_document(token, now) for token in revoked]})
    elif revoked:
        print(f"revoked {len(revoked)} token{'' if len(revoked) == 1 else 's'}")
        _show(revoked, now, as_json=False, empty="")
    if not revoked:
        print(f"saga: error: no active token has the id or name {target!r}", file=sys.stderr)
        return EXIT_NOTHING_REVOKED
    return 0


LIST_COLUMNS = ("id", "name", "role", "state", "expires_at", "last_used_at", "created_by")


def _show(found: Sequence[WebToken], now: datetime, *, as_json: bool, empty: str) -> None:
    if as_json:
        print_json({"tokens": [_document(token, now) for token in found]})
    elif not found:
        print(empty)
    else:
        print_table([_document(token, now) for token in found], LIST_COLUMNS)


def _document(token: WebToken, now: datetime) -> dict[str, Any]:
    """A token as the commands print it: what it is, never its secret or hash."""
    return {
        "id": str(token.id),
        "name": token.name,
        "role": token.role.value,
        "state": token.state(now),
        "created_at": token.created_at,
        "expires_at": token.expires_at,
        "revoked_at": token.revoked_at,
        "last_used_at": token.last_used_at,
        "created_by": token.created_by,
    }


def _who(given: str | None) -> str | None:
    return (given or os.environ.get("SAGA_ACTOR") or _login()).strip() or None


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings)
    return settings


def _run(settings: Settings, work: Callable[[DriverConnection], Awaitable[T]], *, name: str) -> T:
    async def main() -> T:
        database = Database.from_settings(settings, application_name="saga-cli")
        try:
            return await database.run_driver(work, name=name)
        finally:
            await database.dispose()

    return asyncio.run(main())
