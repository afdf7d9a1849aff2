"""The deployment's least-privilege path end to end: ``saga db setup`` run by an owner that
is not a superuser (CREATEROLE and the database, nothing more), then every worker job,
the engine's and the journeys', run once as ``austa_saga_worker`` with work waiting for
each, and each job's work found done: partitions made and detached, a saga timed out,
rows purged, holds released, pre-authorizations voided, inboxes, outboxes and the saga log
pruned. A right the worker lacks fails its job, and so the run.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from dataclasses import replace

import asyncpg
import pytest

from saga.coordinator import Coordinator
from saga.definition import SagaDefinition
from saga.settings import load_settings, to_plain_url
from saga.store import Database, roles
from tests.conftest import REPO_ROOT
from tests.integration.conftest import OwnedDatabase
from tests.integration.sagas import BOOKING

pytestmark = [pytest.mark.integration, pytest.mark.embedded]

UNANSWERED = SagaDefinition(
    "worker_role_unanswered", 1, [BOOKING.steps[0], replace(BOOKING.steps[1], timeout=60)]
)
MONTHS_AHEAD = 6  # the migrations made 3 ahead: the worker makes the rest
OLD = "now() - interval '400 days'"


def saga_command(argv: list[str], environment: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "saga", *argv],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=180,
        check=False,
    )


def base_environment(**extra: str) -> dict[str, str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if k != "DATABASE_URL" and not k.startswith(roles.PASSWORD_VARIABLE_PREFIX)
    }
    environment.update(APP_ENV="test", LOG_LEVEL="INFO", **extra)
    return environment


async def worker_secret(conn: asyncpg.Connection) -> str | None:
    secret: str | None = await conn.fetchval(
        "SELECT rolpassword FROM pg_authid WHERE rolname = $1", roles.WORKER_ROLE
    )
    return secret


async def restore_worker_secret(conn: asyncpg.Connection, secret: str | None) -> None:
    await conn.execute(
        await conn.fetchval(
            "SELECT CASE WHEN $2::text IS NULL "
            "THEN format('ALTER ROLE %I PASSWORD NULL', $1::text) "
            "ELSE format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text) END",
            roles.WORKER_ROLE,
            secret,
        )
    )


async def lay_out_work(conn: asyncpg.Connection) -> dict[str, uuid.UUID]:
    """Something for every database job to do, made as the superuser; returns the ids to
    look for afterwards."""
    ids: dict[str, uuid.UUID] = {}
    # Partitions far in the past, for retention (gamification keeps 24 months).
    await conn.execute(
        "SELECT shared.create_monthly_partitions('gamification.gamification_event', 30, 0)"
    )
    # A member whose soft-deleted coverage (under row-level security) is past retention,
    # a soft-deleted user nobody references, and a live coverage with an unused, expired
    # pre-authorization whose saga is gone.
    ids["member"] = await conn.fetchval(
        "INSERT INTO shared.shared_user (email, full_name) VALUES ($1, 'Member') RETURNING id",
        f"member-{uuid.uuid4().hex[:8]}@example.com",
    )
    ids["gone_user"] = await conn.fetchval(
        f"INSERT INTO shared.shared_user (email, full_name, deleted_at) "
        f"VALUES ($1, 'Gone', {OLD}) RETURNING id",
        f"gone-{uuid.uuid4().hex[:8]}@example.com",
    )
    plan_id = await conn.fetchval(
        "INSERT INTO plan_journey.plan_insurance_plan (code, name, plan_type, "
        "annual_limit_cents) VALUES ($1, 'Plano', 'basic', 1000000) RETURNING id",
        f"TEST-{uuid.uuid4().hex[:8]}",
    )
    coverage = (
        "INSERT INTO plan_journey.plan_member_coverage (user_id, insurance_plan_id, "
        "policy_number, period_start, period_end, annual_limit_cents, reserved_cents, "
        "deleted_at) VALUES ($1, $2, $3, current_date - 30, current_date + 335, 1000000, $4, "
        "{deleted}) RETURNING id"
    )
    ids["gone_coverage"] = await conn.fetchval(
        coverage.format(deleted=OLD), ids["member"], plan_id, f"P-{uuid.uuid4().hex[:10]}", 0
    )
    ids["coverage"] = await conn.fetchval(
        coverage.format(deleted="NULL"), ids["member"], plan_id, f"P-{uuid.uuid4().hex[:10]}", 5000
    )
    ids["authorization"] = await conn.fetchval(
        "INSERT INTO plan_journey.plan_pre_authorization (member_coverage_id, user_id, "
        "appointment_id, amount_cents, status, decided_at, expires_at, saga_id) "
        "VALUES ($1, $2, gen_random_uuid(), 5000, 'approved', now() - interval '40 days', "
        "now() - interval '1 day', gen_random_uuid()) RETURNING id",
        ids["coverage"],
        ids["member"],
    )
    # An expired hold, of a saga that is gone, on a slot of its own.
    specialty = await conn.fetchval(
        "INSERT INTO care_journey.care_specialty (code, name) VALUES ($1, 'Teste') RETURNING id",
        f"T{uuid.uuid4().hex[:8]}",
    )
    provider = await conn.fetchval(
        "INSERT INTO care_journey.care_provider (specialty_id, full_name, crm, city, state) "
        "VALUES ($1, 'Dra. Teste', $2, 'Recife', 'PE') RETURNING id",
        specialty,
        f"CRM-{uuid.uuid4().hex[:8]}",
    )
    slot = await conn.fetchrow(
        "INSERT INTO care_journey.care_slot (provider_id, starts_at, ends_at, status) "
        "VALUES ($1, now() + interval '1 day', now() + interval '1 day 30 minutes', 'held') "
        "RETURNING id, provider_id, starts_at, ends_at",
        provider,
    )
    assert slot is not None
    ids["slot"] = slot["id"]
    ids["hold"] = await conn.fetchval(
        "INSERT INTO care_journey.care_appointment (slot_id, provider_id, patient_id, "
        "starts_at, ends_at, status, hold_expires_at, saga_id) "
        "VALUES ($1, $2, $3, $4, $5, 'held', now() - interval '1 hour', gen_random_uuid()) "
        "RETURNING id",
        slot["id"],
        slot["provider_id"],
        ids["member"],
        slot["starts_at"],
        slot["ends_at"],
    )
    # Old inbox and outbox rows, and a saga finished long ago.
    await conn.execute(
        "INSERT INTO health_journey.health_inbox (message_id, saga_id, step_name, action, "
        f"attempt, reply, processed_at) VALUES (gen_random_uuid(), gen_random_uuid(), 's', "
        f"'execute', 1, '{{}}', {OLD})"
    )
    await conn.execute(
        "INSERT INTO care_journey.care_outbox (message_id, topic, message_key, payload, "
        f"published_at) VALUES (gen_random_uuid(), 't', 'k', '{{}}', {OLD})"
    )
    definition = await conn.fetchval(
        "INSERT INTO shared.saga_definition (name, version, content_hash, steps) "
        "VALUES ('worker_role_finished', 1, 'x', '[]') RETURNING id"
    )
    ids["finished"] = await conn.fetchval(
        "INSERT INTO shared.saga_instance (saga_definition_id, definition_name, "
        "definition_version, status, started_at, finished_at) "
        f"VALUES ($1, 'worker_role_finished', 1, 'completed', {OLD}, {OLD}) RETURNING id",
        definition,
    )
    assert None not in ids.values(), ids
    return ids


async def test_setup_as_a_createrole_owner_then_every_worker_job_as_the_worker_role(
    owned_database: OwnedDatabase, kafka_bootstrap_servers: str
) -> None:
    owned = owned_database
    admin = await asyncpg.connect(to_plain_url(owned.admin_url))
    secret_before = await worker_secret(admin)
    try:
        # The migrate job, as the owner: migrations, seeds, and the worker's password.
        setup = await asyncio.to_thread(
            saga_command,
            ["db", "setup"],
            base_environment(
                DATABASE_URL=owned.owner_url,
                **{roles.password_variable(roles.WORKER_ROLE): f"pw-{uuid.uuid4().hex}"},
            ),
        )
        assert setup.returncode == 0, setup.stderr
        assert "role passwords: 1 set" in setup.stdout, setup.stdout
        assert await worker_secret(admin) != secret_before

        ids = await lay_out_work(admin)
        prefix = f"test.{uuid.uuid4().hex[:10]}"
        settings = load_settings(env_dir=REPO_ROOT, kafka_topic_prefix=prefix)
        database = Database.from_settings(settings, url=owned.admin_url, application_name="tests")
        try:
            async with Coordinator(
                settings=settings, database=database, bootstrap_servers=kafka_bootstrap_servers
            ) as coordinator:
                overdue = await coordinator.start(UNANSWERED, {})  # nobody serves care here
        finally:
            await database.dispose()
        await admin.execute(
            "UPDATE shared.saga_instance SET step_deadline = now() - interval '1 second' "
            "WHERE id = $1",
            overdue,
        )
        partitions_before = await admin.fetchval(
            "SELECT count(*) FROM pg_inherits "
            "WHERE inhparent = 'gamification.gamification_event'::regclass"
        )

        worker = await asyncio.to_thread(
            saga_command,
            ["run", "worker", "--once"],
            base_environment(
                DATABASE_URL=owned.url_as(roles.WORKER_ROLE),
                KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap_servers,
                KAFKA_TOPIC_PREFIX=prefix,
                PARTITIONS_MONTHS_AHEAD=str(MONTHS_AHEAD),
                RETENTION_SOFT_DELETED_DAYS="30",
                RETENTION_INBOX_DAYS="30",
                RETENTION_OUTBOX_DAYS="30",
                RETENTION_SAGA_DAYS="30",
            ),
        )
        assert worker.returncode == 0, worker.stderr
        # Partition maintenance logs a table it could not maintain and goes on.
        assert "partition_maintenance_failed" not in worker.stderr, worker.stderr

        # Partitions: detached past 24 months, made ahead as the worker, all owned by
        # austa_table_owner (the new ones handed over by create_monthly_partitions).
        attached = await admin.fetch(
            "SELECT c.relname, pg_get_userbyid(c.relowner) AS owner FROM pg_inherits i "
            "JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = 'gamification.gamification_event'::regclass"
        )
        ahead = await admin.fetchval(
            "SELECT to_char(date_trunc('month', now()) + make_interval(months => $1), 'YYYYMM')",
            MONTHS_AHEAD,
        )
        names = {row["relname"] for row in attached}
        assert f"gamification_event_p{ahead}" in names
        assert len(names) < partitions_before, "old partitions were detached"
        assert {row["owner"] for row in attached} == {"austa_table_owner"}
        # The overdue step was timed out and sent again (as the coordinator would).
        assert (
            await admin.fetchval(
                "SELECT step_attempt FROM shared.saga_instance WHERE id = $1", overdue
            )
            == 2
        )
        # Purged, released, voided, pruned, archived.
        gone = {
            "gone_user": "shared.shared_user",
            "gone_coverage": "plan_journey.plan_member_coverage",
            "finished": "shared.saga_instance",
        }
        for key, table in gone.items():
            assert not await admin.fetchval(
                f"SELECT count(*) FROM {table} WHERE id = $1", ids[key]
            ), key
        assert await admin.fetchval(
            "SELECT count(*) FROM shared.saga_instance_archive WHERE id = $1", ids["finished"]
        )
        assert (
            await admin.fetchval(
                "SELECT status FROM care_journey.care_appointment WHERE id = $1", ids["hold"]
            )
            == "released"
        )
        assert (
            await admin.fetchval(
                "SELECT status FROM care_journey.care_slot WHERE id = $1", ids["slot"]
            )
            == "open"
        )
        assert (
            await admin.fetchval(
                "SELECT status FROM plan_journey.plan_pre_authorization WHERE id = $1",
                ids["authorization"],
            )
            == "voided"
        )
        assert (
            await admin.fetchval(
                "SELECT reserved_cents FROM plan_journey.plan_member_coverage WHERE id = $1",
                ids["coverage"],
            )
            == 0
        )
        assert not await admin.fetchval("SELECT count(*) FROM health_journey.health_inbox")
        assert not await admin.fetchval("SELECT count(*) FROM care_journey.care_outbox")
    finally:
        await restore_worker_secret(admin, secret_before)
        await admin.close()
