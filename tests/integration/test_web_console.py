"""The operators' console over HTTP, against sagas that really ran on the real PostgreSQL
and broker: who gets in, what each page shows (and never shows), what every bad input
gets, and actions taken through it moving sagas as the CLI's do.

The same walk in a real browser is tests/browser/test_console_in_browser.py.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import pytest

from saga.definition import SagaDefinition
from saga.machine import SagaStatus
from saga.operator.filters import Cursor, SagaFilter, select_sagas
from saga.shapes import AwaitEvent
from saga.store.driver import DriverConnection
from saga.web.tokens import revoke_tokens
from tests.integration.conftest import SagaEnvironment
from tests.integration.console_scene import (
    MEMBER_A,
    PATIENT_VALUES,
    SCRIPT_NOTE,
    ConsoleScene,
    build_console_scene,
    console_client,
    csrf_of,
    sign_in,
)
from tests.integration.sagas import BOOKING, cluster, effects, starter, wait_until

pytestmark = pytest.mark.integration

UUID = re.compile(r"/sagas/([0-9a-f-]{36})")


def listed(page: str) -> set[uuid.UUID]:
    """The sagas a list page links to."""
    return {uuid.UUID(found) for found in UUID.findall(page)}


@pytest.fixture
async def scene(saga_env: SagaEnvironment) -> ConsoleScene:
    return await build_console_scene(saga_env)


async def test_nobody_gets_in_without_a_token_and_sessions_end_with_their_token(
    scene: ConsoleScene,
) -> None:
    async with console_client(scene.env, web_login_attempts=3) as client:
        away = await client.get("/sagas?status=parked")
        assert away.status_code == 303
        assert away.headers["location"] == "/login?next=/sagas%3Fstatus%3Dparked"
        assert (await client.get("/sagas/live?ids=")).status_code == 401

        # A forged sign-in (no CSRF cookie and field) is refused before the token is read.
        forged = await client.post("/login", data={"token": scene.operator_token})
        assert forged.status_code == 403

        wrong = await sign_in(client, "austa_not-a-real-token")
        assert wrong.status_code == 401
        assert "unknown, revoked or expired" in wrong.text

        signed_in = await sign_in(client, scene.viewer_token)
        assert signed_in.status_code == 303
        cookie = signed_in.headers["set-cookie"]
        assert "saga_session=" in cookie
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        page = await client.get("/sagas")
        assert page.status_code == 200
        assert "vera.viewer" in page.text

        async def revoke(conn: DriverConnection) -> None:
            assert await revoke_tokens(conn, "vera.viewer", now=datetime.now(UTC))

        await scene.env.database.run_driver(revoke)
        gone = await client.get("/sagas")
        assert gone.status_code == 303, "a revoked token's session ends at once"

        # Failed sign-ins are limited per client (a success starts the count again): the
        # fourth failure within the minute is not even checked.
        for _ in range(3):
            assert (await sign_in(client, "austa_wrong")).status_code == 401
        throttled = await sign_in(client, "austa_wrong")
        assert throttled.status_code == 429
        assert int(throttled.headers["retry-after"]) >= 1


async def test_every_page_renders_with_security_headers_and_masks_patient_data(
    scene: ConsoleScene,
) -> None:
    async with console_client(scene.env) as client:
        await sign_in(client, scene.viewer_token)
        compensated = scene.sagas["compensated"]
        for path in (
            "/sagas",
            f"/sagas/{compensated}",
            "/attention",
            "/definitions",
            "/definitions/test_searchable_booking/1",
            "/stats",
            "/stats?window=1h",
        ):
            page = await client.get(path)
            assert page.status_code == 200, (path, page.text[:500])
            headers = page.headers
            assert "script-src 'self'" in headers["content-security-policy"]
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-frame-options"] == "DENY"
            assert headers["x-content-type-options"] == "nosniff"
            assert headers["cache-control"] == "no-store"
            assert "<script>" not in page.text.replace(
                '<script src="/static/console.js" defer></script>', ""
            ), path
            for value in PATIENT_VALUES:
                assert value not in page.text, (path, value)

        saga_page = (await client.get(f"/sagas/{compensated}")).text
        assert "&lt;script&gt;alert(&#39;owned&#39;)&lt;/script&gt;" in saga_page
        assert SCRIPT_NOTE not in saga_page
        assert 'class="timeline" role="img"' in saga_page
        for step in ("reserve", "authorize", "award"):
            assert step in saga_page
        # Every attempt's command id is on the page.
        message_ids = await scene.env.database.run_driver(
            lambda conn: conn.fetch(
                "SELECT DISTINCT message_id FROM shared.saga_step_log "
                "WHERE saga_instance_id = $1 AND message_id IS NOT NULL",
                compensated,
            )
        )
        assert message_ids
        for row in message_ids:
            assert str(row["message_id"]) in saga_page

        history = await client.get(f"/sagas/{compensated}/history.json")
        assert history.headers["content-disposition"].startswith("attachment;")
        document = history.json()
        assert document["status"] == "compensated"
        assert [e["status"] for e in document["timeline"] if e["step_name"] == "award"]
        for value in PATIENT_VALUES:
            assert value not in history.text

        static = await client.get("/static/console.js")
        assert static.status_code == 200
        assert (await client.get("/live")).json()["alive"] is True
        assert (await client.get("/ready")).json()["ready"] is True


async def test_search_by_attribute_key_and_id_and_every_filter_of_saga_ls(
    scene: ConsoleScene,
) -> None:
    async with console_client(scene.env) as client:
        await sign_in(client, scene.viewer_token)

        by_attribute = await client.get(f"/sagas?attr=member_id={MEMBER_A}")
        assert listed(by_attribute.text) == scene.member_a_sagas

        searched = await client.get("/sagas", params={"q": f"member_id={MEMBER_A}"})
        assert searched.status_code == 303
        followed = await client.get(searched.headers["location"])
        assert listed(followed.text) == scene.member_a_sagas

        by_key = await client.get("/sagas", params={"q": "booking-a-2"})
        assert listed((await client.get(by_key.headers["location"])).text) == {
            scene.sagas["member_a_2"]
        }

        by_id = await client.get("/sagas", params={"q": str(scene.sagas["parked"])})
        assert by_id.headers["location"] == f"/sagas/{scene.sagas['parked']}"

        parked = await client.get("/sagas?status=parked")
        assert listed(parked.text) == {scene.sagas["parked"]}
        both = await client.get("/sagas?status=parked&status=compensated&since=1h")
        assert listed(both.text) == {scene.sagas["parked"], scene.sagas["compensated"]}

        for query, named in (
            ("status=bogus", "status: unknown status 'bogus'"),
            ("since=yesterday", "since: expected an ISO time"),
            ("stuck_for=-5m", "stuck_for: a duration must be positive"),
            ("children_of=nope", "children_of: not a saga id"),
            ("attr=member_id", "attr: expected NAME=VALUE"),
            ("attr=Member-Id=1", "attr: 'Member-Id' is not a search attribute name"),
            ("cursor=garbage", "cursor: not a page cursor"),
            ("since=2h&until=3h", "must be before --until"),
        ):
            bad = await client.get(f"/sagas?{query}")
            assert bad.status_code == 400, query
            assert named in bad.text.replace("&#39;", "'"), (query, bad.text[:300])
            assert "Traceback" not in bad.text

        for path, status in (
            (f"/sagas/{uuid.uuid4()}", 404),
            ("/sagas/not-a-uuid", 400),
            ("/definitions/nothing/1", 404),
            ("/definitions/test_searchable_booking/zero", 400),
            ("/stats?window=1y", 400),
            ("/attention?stuck_after=soon", 400),
            ("/sagas/live?ids=nope", 400),
            ("/no/such/page", 404),
        ):
            response = await client.get(path)
            assert response.status_code == status, (path, response.text[:300])
            assert "Traceback" not in response.text

        ids = ",".join(str(s) for s in scene.sagas.values())
        live = (await client.get(f"/sagas/live?ids={ids}")).json()
        assert {row["id"]: row["status"] for row in live["sagas"]}[
            str(scene.sagas["parked"])
        ] == "parked"

    # The list pages by keyset: the second page starts after the first's last saga.
    async def pages(conn: DriverConnection) -> list[list[uuid.UUID]]:
        everything = SagaFilter(definitions=("test_searchable_booking",))
        first = await select_sagas(conn, everything, limit=4)
        second = await select_sagas(conn, everything, limit=4, after=Cursor.after(first[-1]))
        return [[s.id for s in first], [s.id for s in second]]

    first, second = await scene.env.database.run_driver(pages)
    assert len(first) == 4
    assert len(second) == 2
    assert set(first) | set(second) == set(scene.sagas.values())


async def test_an_operator_retries_a_parked_saga_through_preview_and_confirmation(
    scene: ConsoleScene,
) -> None:
    env = scene.env
    parked = scene.sagas["parked"]
    async with console_client(env) as viewer_client:
        await sign_in(viewer_client, scene.viewer_token)
        page = (await viewer_client.get(f"/sagas/{parked}")).text
        assert "Viewers read; operators act." in page
        refused = await viewer_client.post(
            f"/sagas/{parked}/act/retry",
            data={"csrf": csrf_of(page), "stage": "preview", "reason": "try again"},
        )
        assert refused.status_code == 403
        assert "viewers read, operators act" in refused.text

    async with cluster(env.settings, env.database, env.bootstrap), console_client(env) as client:
        await sign_in(client, scene.operator_token)
        page = (await client.get(f"/sagas/{parked}")).text
        csrf = csrf_of(page)

        forged = await client.post(
            f"/sagas/{parked}/act/retry", data={"stage": "preview", "reason": "forged"}
        )
        assert forged.status_code == 403
        assert "security token" in forged.text

        no_reason = await client.post(
            f"/sagas/{parked}/act/retry", data={"csrf": csrf, "stage": "preview", "reason": " "}
        )
        assert no_reason.status_code == 400
        assert "reason: say why" in no_reason.text

        preview = await client.post(
            f"/sagas/{parked}/act/retry",
            data={"csrf": csrf, "stage": "preview", "reason": "void fixed"},
        )
        assert preview.status_code == 200
        assert "parked at authorize (compensate)" in preview.text
        assert "compensating at authorize (compensate)" in preview.text
        before = re.search(r'name="before" value="([^"]+)"', preview.text)
        assert before is not None
        # Nothing was written by the preview.
        assert (
            await env.database.run_driver(
                lambda conn: conn.fetchval(
                    "SELECT status FROM shared.saga_instance WHERE id = $1", parked
                )
            )
            == "parked"
        )

        # The participant is fixed: void stops failing for this saga's next attempt.
        await env.database.run_driver(
            lambda conn: conn.execute(
                "UPDATE shared.saga_instance SET payload = payload - 'error' WHERE id = $1",
                parked,
            )
        )
        form = {"csrf": csrf, "stage": "execute", "reason": "void fixed", "before": before[1]}
        done = await client.post(f"/sagas/{parked}/act/retry", data=form)
        assert done.status_code == 200
        assert "Done" in done.text
        await wait_until(env.database, parked, "status = 'compensated'")
        assert await effects(env.database, parked) == []

        # The same confirmation again finds the saga changed and does nothing.
        again = await client.post(f"/sagas/{parked}/act/retry", data=form)
        assert "Done" not in again.text
        manual = await env.database.run_driver(
            lambda conn: conn.fetch(
                "SELECT actor, status, error FROM shared.saga_step_log "
                "WHERE saga_instance_id = $1 AND actor IS NOT NULL ORDER BY created_at",
                parked,
            )
        )
        assert [(r["actor"], r["status"]) for r in manual] == [
            ("otto.operator", "retried"),
            ("otto.operator", "dispatched"),
        ]
        assert manual[0]["error"] == "retried by otto.operator: void fixed"

        after = (await client.get(f"/sagas/{parked}")).text
        assert "otto.operator" in after


async def test_bulk_actions_are_a_dry_run_first_and_signals_are_previewed(
    scene: ConsoleScene,
) -> None:
    env = scene.env
    parked = scene.sagas["parked"]
    async with console_client(env) as client:
        await sign_in(client, scene.operator_token)
        attention = (await client.get("/attention")).text
        assert "parked" in attention
        assert str(parked)[:8] in attention
        csrf = csrf_of(attention)
        dry = await client.post(
            "/attention/bulk",
            data={
                "csrf": csrf,
                "stage": "preview",
                "action": "abort",
                "reason": "handled by phone",
                "ids": [str(parked), str(scene.sagas["member_b"])],
            },
        )
        assert dry.status_code == 200
        assert "Dry run: 1 would change, 1 would not" in dry.text
        assert await _status(env, parked) == "parked"
        before = re.findall(r'name="before" value="([^"]+)"', dry.text)
        executed = await client.post(
            "/attention/bulk",
            data={
                "csrf": csrf,
                "stage": "execute",
                "action": "abort",
                "reason": "handled by phone",
                "ids": [str(parked), str(scene.sagas["member_b"])],
                "before": [b.replace("&#39;", "'") for b in before],
            },
        )
        assert "1 changed, 1 left as they were" in executed.text
        assert await _status(env, parked) == "aborted"

        for data, problem in (
            ({"action": "explode", "reason": "x", "ids": [str(parked)]}, "unknown action"),
            ({"action": "retry", "reason": "x"}, "ids: choose at least one saga"),
            ({"action": "retry", "reason": "", "ids": [str(parked)]}, "reason: say why"),
            ({"action": "retry", "reason": "x", "ids": ["nope"]}, "ids: not a saga id"),
        ):
            bad = await client.post("/attention/bulk", data={"csrf": csrf, **data})
            assert bad.status_code == 400, (data, bad.text[:300])
            assert problem in bad.text.replace("&#39;", "'")

        # A finished saga refuses a signal; the preview says so before anything is sent.
        member_a = scene.sagas["member_a_1"]
        preview = await client.post(
            f"/sagas/{member_a}/signal",
            data={"csrf": csrf, "event": "approved", "data": "{}", "reason": "test"},
        )
        assert "the signal will be refused" in preview.text
        bad_json = await client.post(
            f"/sagas/{member_a}/signal",
            data={"csrf": csrf, "event": "approved", "data": "[1", "reason": "test"},
        )
        assert bad_json.status_code == 400
        assert "data: not valid JSON" in bad_json.text
        signal_id = re.search(r'name="signal_id" value="([^"]+)"', preview.text)
        assert signal_id is not None
        sent = await client.post(
            f"/sagas/{member_a}/signal",
            data={
                "csrf": csrf,
                "stage": "execute",
                "event": "approved",
                "data": "{}",
                "reason": "test",
                "signal_id": signal_id[1],
            },
        )
        assert "Refused" in sent.text


async def _status(env: SagaEnvironment, saga_id: uuid.UUID) -> str:
    for _ in range(3):
        status = await env.database.run_driver(
            lambda conn: conn.fetchval(
                "SELECT status FROM shared.saga_instance WHERE id = $1", saga_id
            )
        )
        if status is not None:
            return str(status)
        await asyncio.sleep(0.05)
    raise AssertionError(f"no saga {saga_id}")


async def test_saga_ls_finds_by_attribute_and_key_as_the_console_does(
    scene: ConsoleScene,
) -> None:
    def ls(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "saga", "ls", *argv],
            env={**scene.env.process_environment(), "LOG_LEVEL": "WARNING"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    found = await asyncio.to_thread(ls, "--attr", f"member_id={MEMBER_A}", "--json")
    assert found.returncode == 0, found.stderr
    rows = json.loads(found.stdout)["sagas"]
    assert {uuid.UUID(row["id"]) for row in rows} == scene.member_a_sagas
    assert all(row["attributes"]["member_id"] == MEMBER_A for row in rows)

    by_key = await asyncio.to_thread(ls, "--key", "booking-a-3", "--json")
    rows = json.loads(by_key.stdout)["sagas"]
    assert [uuid.UUID(row["id"]) for row in rows] == [scene.sagas["member_a_3"]]

    bad = await asyncio.to_thread(ls, "--attr", "member_id")
    assert bad.returncode == 2
    assert bad.stderr.strip() == "saga: error: --attr: expected NAME=VALUE; got 'member_id'"


async def test_an_operator_signals_a_waiting_saga_which_moves_on(scene: ConsoleScene) -> None:
    env = scene.env
    reserve, _, _, confirm = BOOKING.steps
    reviewed = SagaDefinition(
        "test_console_review",
        1,
        [reserve, AwaitEvent("review", "claim_reviewed", 60.0), confirm],
        search_attributes=("member_id",),
    )
    async with (
        cluster(env.settings, env.database, env.bootstrap),
        starter(env) as coordinator,
        console_client(env) as client,
    ):
        saga_id = await coordinator.start(reviewed, {"member_id": MEMBER_A})
        await wait_until(env.database, saga_id, "status = 'waiting'")
        await sign_in(client, scene.operator_token)
        page = (await client.get(f"/sagas/{saga_id}")).text
        assert "claim_reviewed" in page
        form = {
            "csrf": csrf_of(page),
            "event": "claim_reviewed",
            "data": '{"approved": true}',
            "reason": "auditor said yes by phone",
        }
        preview = await client.post(f"/sagas/{saga_id}/signal", data=form)
        assert "moves on at once" in preview.text
        signal_id = re.search(r'name="signal_id" value="([^"]+)"', preview.text)
        assert signal_id is not None
        confirm_form = {**form, "stage": "execute", "signal_id": signal_id[1]}
        sent = await client.post(f"/sagas/{saga_id}/signal", data=confirm_form)
        assert "Accepted" in sent.text
        summary = await coordinator.wait(saga_id, timeout=30)
        assert summary.status is SagaStatus.COMPLETED
        # The same confirmation again delivers nothing more: the signal id is the preview's.
        again = await client.post(f"/sagas/{saga_id}/signal", data=confirm_form)
        assert "Sent before; nothing changed." in again.text

    signals = await env.database.run_driver(
        lambda conn: conn.fetch(
            "SELECT actor, reason, payload FROM shared.saga_signal WHERE saga_instance_id = $1",
            saga_id,
        )
    )
    assert [(r["actor"], r["reason"]) for r in signals] == [
        ("otto.operator", "auditor said yes by phone")
    ]
