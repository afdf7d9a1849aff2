"""``python -m benchmarks.console``: the web console's pages over a saga log of N sagas.

It makes a throw-away database on ``DATABASE_URL``'s server (an embedded one when that is
unset), migrates it, fills it with N sagas of a month (:mod:`benchmarks.console_fill`),
signs in to the console with an operator's token and asks each page ~200 times in
process (``httpx.ASGITransport``: no socket, no browser), so what is timed is the server:
routing, the queries, the templates. Each request's time is taken around the call and
read from the ``Server-Timing: app;dur=`` header the console sets; the database's side
is read from ``pg_stat_statements`` when the server has it loaded, else from the CPU time
of the console's backends (a server on this machine), else not at all.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres \\
        python -m benchmarks.console --sagas 1000000
    python -m benchmarks.console --sagas 20000 --fill-only       # the fill alone
    python -m benchmarks.console --sagas 1000000 --keep-database  # then, without refilling:
    python -m benchmarks.console --use-database console_bench_...

Targets (issue): p95 under 150 ms for the list, a search and a saga page; reported as
PASS or MISS, never asserted. JSON: ``benchmarks/results/console.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import resource
import secrets
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
from sqlalchemy.engine import make_url

from benchmarks.console_fill import FillReport, fill, table_sizes
from benchmarks.saga_bench.database import admin_server, server_version
from benchmarks.saga_bench.report import engine_revision
from saga.logging import configure_logging
from saga.settings import Settings, load_settings, to_plain_url
from saga.store import Database, admin, migrate
from saga.store.driver import DriverConnection

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS = REPO_ROOT / "benchmarks" / "results"
BASE_URL = "https://console.bench"
TARGET_P95_MS = 150.0
LIVE_IDS = 50
DEEP_PAGE = 50


@dataclass
class Options:
    sagas: int
    chunk: int
    requests: int
    heavy_requests: int
    warmup: int
    fill_only: bool
    keep_database: bool
    use_database: str | None
    json_path: Path
    seed: int


def parse_options(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.console", description=__doc__)
    parser.add_argument("--sagas", type=int, default=100_000, help="sagas to fill (100,000)")
    parser.add_argument("--chunk", type=int, default=100_000, help="sagas per fill statement")
    parser.add_argument("--requests", type=int, default=200, help="timed requests per page")
    parser.add_argument(
        "--heavy-requests",
        type=int,
        default=50,
        help="timed requests of the pages that aggregate (attention, definitions, stats)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed requests per page first")
    parser.add_argument("--fill-only", action="store_true", help="fill, report, stop")
    parser.add_argument("--keep-database", action="store_true", help="do not drop it at the end")
    parser.add_argument(
        "--use-database",
        metavar="NAME",
        help="measure a database an earlier --keep-database run filled (no fill; kept)",
    )
    parser.add_argument("--json", type=Path, default=RESULTS / "console.json", dest="json_path")
    parser.add_argument("--seed", type=int, default=42, help="picks the sagas asked for")
    args = parser.parse_args(argv)
    if args.sagas < 1 or args.chunk < 1 or args.requests < 1 or args.heavy_requests < 1:
        parser.error("--sagas, --chunk, --requests and --heavy-requests must be at least 1")
    return Options(**vars(args))


# -- the database ------------------------------------------------------------------------


@contextlib.contextmanager
def bench_database(admin_url: str, options: Options) -> Iterator[tuple[str, bool]]:
    """(URL, whether it must be filled): a new migrated database, dropped at the end
    unless kept, or the one ``--use-database`` names."""
    if options.use_database:
        yield admin.with_database(admin_url, options.use_database), False
        return
    name = f"console_bench_{datetime.now(UTC):%Y%m%d_%H%M%S}_{os.getpid()}"
    url = asyncio.run(admin.create_database(admin_url, name))
    try:
        migrate.upgrade(url)
        yield url, True
    finally:
        if options.keep_database:
            print(f"kept database {name} (measure it again: --use-database {name})")
        else:
            asyncio.run(admin.drop_database(admin_url, name))


# -- the cases -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    name: str
    paths: Sequence[str]
    """Asked in turn, round and round (different sagas and members: no warm row only)."""
    requests: int
    target: bool = False
    """One of the pages the issue's target (p95 < 150 ms) is about."""


@dataclass
class CaseResult:
    name: str
    requests: int
    errors: int
    statuses: dict[int, int]
    wall_ms: dict[str, float]
    """p50, p95, p99, max of the time around each in-process request."""
    app_ms: dict[str, float] | None
    """The same of ``Server-Timing: app;dur`` when the console sets it."""
    db_ms_per_request: float | None
    db_statements_per_request: float | None
    target: str | None
    first_error: str | None = None


@dataclass
class Samples:
    """What a sample of the log gives the cases to ask for."""

    saga_ids: list[str]
    user_ids: list[str]
    keys: list[str]
    live_ids: list[str]


async def sample(url: str, count: int, rng: random.Random) -> Samples:
    """About ``count`` sagas drawn from the whole table (the same ones for a seed), and 50
    of those in flight, which are what the live update is asked about."""
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        total = int(
            await conn.fetchval(
                "SELECT reltuples FROM pg_class WHERE oid = $1::regclass", "shared.saga_instance"
            )
            or 0
        )
        percent = min(100.0, 100.0 * max(4 * count, 1000) / max(total, 1))
        rows = await conn.fetch(
            f"SELECT id, payload ->> 'user_id' AS user_id, idempotency_key "
            f"FROM shared.saga_instance TABLESAMPLE BERNOULLI ({percent:.6f}) "
            f"REPEATABLE ({rng.randrange(2**31)})"
        )
        live = await conn.fetch(
            "SELECT id FROM shared.saga_instance "
            "WHERE status IN ('running', 'compensating', 'waiting') LIMIT $1",
            LIVE_IDS,
        )
    finally:
        await conn.close()
    rows = list(rows)
    rng.shuffle(rows)
    ids = [str(row["id"]) for row in rows]
    live_ids = [str(row["id"]) for row in live]
    live_ids += ids[: LIVE_IDS - len(live_ids)]
    return Samples(
        saga_ids=ids[:count],
        user_ids=[row["user_id"] for row in rows if row["user_id"]][:count],
        keys=[row["idempotency_key"] for row in rows if row["idempotency_key"]][:count],
        live_ids=live_ids,
    )


def cases(s: Samples, deep: str | None, options: Options) -> list[Case]:
    n, heavy = options.requests, options.heavy_requests
    quote = urllib.parse.quote
    live = "/sagas/live?ids=" + ",".join(s.live_ids)
    return [
        Case("list: first page", ["/sagas"], n, target=True),
        Case("list: status=parked", ["/sagas?status=parked"], n),
        Case(f"list: page {DEEP_PAGE} (cursors)", [deep] if deep else [], n),
        Case(
            "search: attr user_id",
            [f"/sagas?attr={quote('user_id=' + u)}" for u in s.user_ids],
            n,
            target=True,
        ),
        Case("search: idempotency key", [f"/sagas?key={quote(k)}" for k in s.keys], n, target=True),
        Case("saga page", [f"/sagas/{i}" for i in s.saga_ids], n, target=True),
        Case("history.json", [f"/sagas/{i}/history.json" for i in s.saga_ids], n),
        Case(f"live update ({len(s.live_ids)} ids)", [live], n),
        Case("attention", ["/attention"], heavy),
        Case("definitions", ["/definitions"], heavy),
        # The statistics page shows the last 24 hours unless asked otherwise.
        Case("stats (24h)", ["/stats"], heavy),
    ]


# -- the page parser -----------------------------------------------------------------------


class _Page(HTMLParser):
    """The hidden form fields and the links of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: dict[str, str] = {}
        self.links: list[tuple[dict[str, str], str]] = []
        self._link: dict[str, str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {key: value or "" for key, value in attrs}
        if tag == "input" and found.get("type") == "hidden" and "name" in found:
            self.hidden[found["name"]] = found.get("value", "")
        elif tag == "a" and "href" in found:
            self._link, self._text = found, ""

    def handle_data(self, data: str) -> None:
        if self._link is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._link is not None:
            self.links.append((self._link, self._text.strip()))
            self._link = None

    def older(self) -> str | None:
        """The list's link to the next (older) page."""
        paged = [(a, text) for a, text in self.links if "cursor=" in a["href"]]
        for attributes, _ in paged:
            if attributes.get("id") == "older" or attributes.get("rel") == "next":
                return attributes["href"]
        for attributes, text in paged:
            if "older" in text.lower():
                return attributes["href"]
        return paged[0][0]["href"] if len(paged) == 1 else None


def parse(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


# -- the console ---------------------------------------------------------------------------


async def operator_token(settings: Settings, url: str) -> str:
    from saga.web.tokens import Role, create_token

    database = Database.from_settings(settings, url=url, application_name="console-bench")

    async def create(conn: DriverConnection) -> str:
        _, secret = await create_token(
            conn,
            name="console-bench",
            role=Role.OPERATOR,
            expires_in=timedelta(hours=6),
            created_by="benchmarks.console",
        )
        return secret

    try:
        return await database.run_driver(create, name="bench.token")
    finally:
        await database.dispose()


@contextlib.asynccontextmanager
async def console_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The console app, started (its lifespan opens its pool), behind an in-process client."""
    # Imported here: --fill-only needs none of the console.
    from saga.web.app import create_app

    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url=BASE_URL, timeout=60.0
        ) as client,
    ):
        yield client


async def sign_in(client: httpx.AsyncClient, secret: str) -> None:
    form = await client.get("/login")
    form.raise_for_status()
    answer = await client.post(
        "/login", data={**parse(form.text).hidden, "token": secret}, follow_redirects=False
    )
    if answer.status_code not in (302, 303) or not client.cookies:
        raise RuntimeError(f"sign-in failed: {answer.status_code} {answer.text[:300]!r}")
    check = await client.get("/sagas", follow_redirects=False)
    if check.status_code != 200:
        raise RuntimeError(f"signed in, but /sagas answers {check.status_code}")


async def walk_to_page(client: httpx.AsyncClient, page: int) -> str | None:
    """The URL of page ``page`` of the unfiltered list, following "older" links."""
    path = "/sagas"
    for _ in range(page - 1):
        answer = await client.get(path)
        if answer.status_code != 200:
            return None
        older = parse(answer.text).older()
        if older is None:
            return None
        path = urllib.parse.urljoin(path, older)
    return path


_SERVER_TIMING = re.compile(r"(?:^|,)\s*app;dur=([0-9.]+)")


def _app_ms(response: httpx.Response) -> float | None:
    found = _SERVER_TIMING.search(response.headers.get("server-timing", ""))
    return float(found.group(1)) if found else None


def percentiles(samples: Sequence[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(ordered[-1], 2)}


async def run_case(
    client: httpx.AsyncClient, case: Case, warmup: int, meter: DatabaseMeter
) -> CaseResult:
    if not case.paths:
        return CaseResult(case.name, 0, 0, {}, {}, None, None, None, None, "no such page found")
    for i in range(warmup):
        await client.get(case.paths[i % len(case.paths)])
    wall: list[float] = []
    app: list[float] = []
    statuses: dict[int, int] = {}
    first_error: str | None = None
    await meter.start()
    for i in range(case.requests):
        started = time.perf_counter()
        answer = await client.get(case.paths[i % len(case.paths)])
        took = (time.perf_counter() - started) * 1000
        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1
        if answer.status_code != 200:
            first_error = first_error or f"{answer.status_code}: {answer.text[:200]!r}"
            continue
        wall.append(took)
        server = _app_ms(answer)
        if server is not None:
            app.append(server)
    db_ms, statements = await meter.stop(case.requests)
    errors = case.requests - len(wall)
    verdict = None
    if case.target and wall:
        verdict = "PASS" if percentiles(wall)["p95"] < TARGET_P95_MS else "MISS"
    return CaseResult(
        name=case.name,
        requests=case.requests,
        errors=errors,
        statuses=statuses,
        wall_ms=percentiles(wall) if wall else {},
        app_ms=percentiles(app) if app else None,
        db_ms_per_request=db_ms,
        db_statements_per_request=statements,
        target=verdict,
        first_error=first_error,
    )


# -- the database's side -------------------------------------------------------------------


@dataclass
class DatabaseMeter:
    """What the console's statements cost the server: ``pg_stat_statements`` (execution
    time and statements) when it is loaded, else the CPU time of the console's backends
    when the server runs on this machine, else nothing."""

    url: str
    database: str
    source: str = "none"
    _conn: asyncpg.Connection | None = None
    _dbid: int = 0
    _before: dict[int, float] = field(default_factory=dict)
    _pgss_before: tuple[float, float] = (0.0, 0.0)

    async def open(self) -> None:
        self._conn = await asyncpg.connect(to_plain_url(self.url))
        self._dbid = int(
            await self._conn.fetchval(
                "SELECT oid FROM pg_database WHERE datname = $1", self.database
            )
        )
        try:
            await self._conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await self._conn.fetchval("SELECT count(*) FROM pg_stat_statements")
            self.source = "pg_stat_statements"
        except asyncpg.PostgresError:
            # Created but not loaded (shared_preload_libraries): the view refuses to answer.
            self.source = "backend cpu" if self._local() else "none"

    async def close(self) -> None:
        if self._conn is not None:
            await self._conn.close()

    def _local(self) -> bool:
        host = make_url(to_plain_url(self.url)).host
        return host in (None, "", "127.0.0.1", "localhost", "::1") or str(host).startswith("/")

    async def start(self) -> None:
        if self.source == "pg_stat_statements":
            self._pgss_before = await self._pgss()
        elif self.source == "backend cpu":
            self._before = await self._backend_cpu()

    async def stop(self, requests: int) -> tuple[float | None, float | None]:
        if self.source == "pg_stat_statements":
            calls, ms = await self._pgss()
            before_calls, before_ms = self._pgss_before
            return (
                round((ms - before_ms) / requests, 3),
                round((calls - before_calls) / requests, 2),
            )
        if self.source == "backend cpu":
            after = await self._backend_cpu()
            spent = sum(seconds - self._before.get(pid, 0.0) for pid, seconds in after.items())
            return round(spent * 1000 / requests, 3), None
        return None, None

    async def _pgss(self) -> tuple[float, float]:
        assert self._conn is not None
        row = await self._conn.fetchrow(
            "SELECT coalesce(sum(calls), 0) AS calls, coalesce(sum(total_exec_time), 0) AS ms "
            "FROM pg_stat_statements WHERE dbid = $1 AND query NOT LIKE '%pg_stat_statements%'",
            self._dbid,
        )
        assert row is not None
        return float(row["calls"]), float(row["ms"])

    async def _backend_cpu(self) -> dict[int, float]:
        assert self._conn is not None
        pids = await self._conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            self.database,
        )
        seconds: dict[int, float] = {}
        for row in pids:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(row["pid"]).cpu_times()
                seconds[row["pid"]] = times.user + times.system
        return seconds


# -- the run -------------------------------------------------------------------------------


async def measure(settings: Settings, url: str, options: Options) -> dict[str, Any]:
    rng = random.Random(options.seed)
    samples = await sample(url, max(options.requests, 200), rng)
    secret = await operator_token(settings, url)
    name = make_url(to_plain_url(url)).database or ""
    meter = DatabaseMeter(url, name)
    await meter.open()
    results: list[CaseResult] = []
    try:
        async with console_client(settings) as client:
            await sign_in(client, secret)
            walked = time.perf_counter()
            deep = await walk_to_page(client, DEEP_PAGE)
            walk_seconds = time.perf_counter() - walked
            for case in cases(samples, deep, options):
                print(f"  {case.name} ...", flush=True)
                results.append(await run_case(client, case, options.warmup, meter))
    finally:
        await meter.close()
    return {
        "cases": [asdict(r) for r in results],
        "walk_to_page_seconds": round(walk_seconds, 3),
        "database_meter": meter.source,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def print_fill(report: FillReport) -> None:
    print(
        f"fill: {report.sagas:,} sagas, {report.step_rows:,} step rows in "
        f"{report.seconds:.1f} s, then VACUUM ANALYZE {report.analyze_seconds:.1f} s"
    )
    print("  by status: " + ", ".join(f"{k} {v:,}" for k, v in report.by_status.items()))
    print_sizes(report.sizes)


def print_sizes(sizes: dict[str, dict[str, int]]) -> None:
    mib = 2**20
    for table, size in sizes.items():
        print(
            f"  {table:<24} {size['rows']:>12,} rows  table {size['table'] / mib:>9,.1f} MiB"
            f"  indexes {size['indexes'] / mib:>9,.1f} MiB  total {size['total'] / mib:>9,.1f} MiB"
        )


def print_cases(measured: dict[str, Any]) -> None:
    header = (
        f"{'case':<26} {'n':>4} {'err':>4} {'p50':>7} {'p95':>7} {'p99':>7} {'max':>7} "
        f"{'app p50':>8} {'app p95':>8} {'db ms':>7} {'target':>7}"
    )
    print(f"\nin-process request time, ms (db ms: {measured['database_meter']} per request)")
    print(header)
    print("-" * len(header))
    for case in measured["cases"]:
        wall, app = case["wall_ms"] or {}, case["app_ms"] or {}

        def cell(figures: dict[str, float], key: str, width: int) -> str:
            return f"{figures[key]:>{width}.1f}" if key in figures else f"{'-':>{width}}"

        db = case["db_ms_per_request"]
        print(
            f"{case['name']:<26} {case['requests']:>4} {case['errors']:>4} "
            f"{cell(wall, 'p50', 7)} {cell(wall, 'p95', 7)} {cell(wall, 'p99', 7)} "
            f"{cell(wall, 'max', 7)} {cell(app, 'p50', 8)} {cell(app, 'p95', 8)} "
            f"{(f'{db:.2f}' if db is not None else '-'):>7} {case['target'] or '':>7}"
        )
    for case in measured["cases"]:
        if case["first_error"]:
            print(f"  {case['name']}: {case['errors']} failed; first: {case['first_error']}")
    live = next(c for c in measured["cases"] if c["name"].startswith("live update"))
    statements = live["db_statements_per_request"]
    if live["db_ms_per_request"] is not None:
        extra = f", {statements} statements" if statements is not None else ""
        print(
            f"live update: {live['db_ms_per_request']} ms of the database per update "
            f"({measured['database_meter']}{extra})"
        )
    print(
        f"walk to page {DEEP_PAGE} through the 'older' links: "
        f"{measured['walk_to_page_seconds']} s; peak RSS {measured['peak_rss_mib']} MiB; "
        f"targets: p95 < {TARGET_P95_MS:.0f} ms (reported, not asserted)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    base = load_settings(env_dir=REPO_ROOT)
    configure_logging(load_settings(env_dir=REPO_ROOT, log_level="WARNING"))
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "revision": engine_revision(),
        "options": {k: str(v) for k, v in asdict(options).items()},
    }
    with admin_server() as admin_url, bench_database(admin_url, options) as (url, empty):
        report["postgresql"] = asyncio.run(server_version(admin_url))
        # No broker is needed to read pages (the console then runs as it does without one:
        # actions' commands wait for the relay). Queries are not logged one by one.
        settings = load_settings(
            env_dir=REPO_ROOT,
            database_url=url,
            database_log_queries=False,
            log_level="WARNING",
            kafka_bootstrap_servers=base.kafka_bootstrap_servers,
            web_secret_key=base.web_secret_key or secrets.token_urlsafe(32),
        )
        if empty:
            print(f"filling {options.sagas:,} sagas ...", flush=True)
            filled = asyncio.run(fill(settings, url, options.sagas, chunk=options.chunk))
            print_fill(filled)
            report["fill"] = asdict(filled)
        else:
            report["sizes"] = asyncio.run(_sizes(url))
            print_sizes(report["sizes"])
        if not options.fill_only:
            print("measuring the pages ...", flush=True)
            report["measured"] = asyncio.run(measure(settings, url, options))
            print_cases(report["measured"])
    options.json_path.parent.mkdir(parents=True, exist_ok=True)
    options.json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"JSON: {options.json_path}")
    return 0


async def _sizes(url: str) -> dict[str, dict[str, int]]:
    conn = await asyncpg.connect(to_plain_url(url))
    try:
        return await table_sizes(conn)
    finally:
        await conn.close()


if __name__ == "__main__":
    sys.exit(main())
