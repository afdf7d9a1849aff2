"""``saga health``: ask a running engine process whether it is ready (or alive).

Made for container health checks, which run a command inside the container: the image
has no curl, and this needs nothing but the engine itself. Exit 0 when the probe answers
200, 1 otherwise, with one line saying what it found.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.error
import urllib.request
from typing import Any

from saga.errors import ConfigurationError

_TIMEOUT_SECONDS = 3.0


def add_parser(commands: Any) -> None:
    health = commands.add_parser(
        "health", help="probe a running process's /ready (or /live) endpoint; exit 0 if OK"
    )
    health.add_argument(
        "--live",
        action="store_true",
        help="probe /live (is the process turning?) instead of /ready (does it take work?)",
    )
    health.add_argument(
        "--url",
        default=None,
        help="the endpoint to probe; default http://127.0.0.1:$METRICS_PORT/ready (or /live)",
    )
    health.set_defaults(handler=_probe)


def _probe(args: argparse.Namespace) -> int:
    url = args.url or _local_url("live" if args.live else "ready")
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_SECONDS) as response:  # noqa: S310 - http only, from our own settings or flag
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError) as exc:
        print(f"saga health: {url} did not answer: {getattr(exc, 'reason', exc)}")
        return 1
    print(f"saga health: {url} answered {status}: {_describe(body)}")
    return 0 if status == 200 else 1


def _local_url(endpoint: str) -> str:
    # Only the port is read, and straight from the environment: a health check must not
    # fail on settings that concern the process it probes, not the probe.
    port = os.environ.get("METRICS_PORT", "").strip()
    if not port.isdigit():
        raise ConfigurationError(
            "saga health needs --url or METRICS_PORT (the port the process serves /ready on)"
        )
    return f"http://127.0.0.1:{port}/{endpoint}"


def _describe(body: bytes) -> str:
    try:
        report = json.loads(body)
    except ValueError:
        return body[:200].decode(errors="replace")
    if not isinstance(report, dict):
        return str(report)
    text = f"{report.get('process', '?')} is {report.get('phase', '?')}"
    if report.get("waiting_for"):
        text += f", waiting for {', '.join(report['waiting_for'])}"
    return text
