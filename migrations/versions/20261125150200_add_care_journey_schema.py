"""add care journey schema: specialties, providers, slots, appointments without double booking

Revision ID: 20261125150200
Revises: 20261125150100
Create Date: 2026-11-25 15:02:00
"""

from __future__ import annotations

from migrations._ddl import (
    AUDIT_COLUMNS,
    ID_COLUMN,
    drop_journey_schema,
    execute,
    grant_schema_to,
    inbox_and_outbox,
    updated_at_trigger,
)

revision = "20261125150200"
down_revision: str | None = "20261125150100"
branch_labels: str | None = None
depends_on: str | None = None

SCHEMA = "care_journey"
SERVICE_ROLE = "austa_care_journey"

# The 26 states and the Federal District.
BRAZILIAN_STATES = (
    "AC", "AL", "AP", "AM", "BA", "CE", "DF", "ES", "GO", "MA", "MT", "MS", "MG", "PA",
    "PB", "PR", "PE", "PI", "RJ", "RN", "RS", "RO", "RR", "SC", "SP", "SE", "TO",
)  # fmt: skip
STATE_LIST = ", ".join(f"'{uf}'" for uf in BRAZILIAN_STATES)

# Appointments that occupy their provider's time (and their slot). 'cancelled' and
# 'released' (a hold given back by a compensation or by the hold-expiry worker) do not.
LIVE_APPOINTMENT = "status IN ('held', 'confirmed', 'completed', 'billed') AND deleted_at IS NULL"

# btree_gist gives GiST an equality operator class for uuid, which the exclusion
# constraints need (provider_id WITH =). It goes to public with IF NOT EXISTS: it is
# database-wide, and other schemas may already have it and rely on it.
EXTENSIONS = ["CREATE EXTENSION IF NOT EXISTS btree_gist WITH SCHEMA public"]

# Downgrade removes the extension only when nothing else uses it: a plain (RESTRICT) drop
# fails when other objects depend on it, and a role that does not own it may not drop it;
# either way it stays, and the downgrade goes on. Never CASCADE: that would drop other
# schemas' constraints and indexes.
DROP_EXTENSIONS = [
    """
    DO $$
    BEGIN
        DROP EXTENSION IF EXISTS btree_gist;
    EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
        RAISE NOTICE 'btree_gist is kept: other objects use it or another role owns it';
    END $$"""
]

REFERENCE_TABLES = [
    f"""
    CREATE TABLE care_journey.care_specialty (
        {ID_COLUMN},
        code text NOT NULL,
        name text NOT NULL,
        {AUDIT_COLUMNS},
        CONSTRAINT care_specialty_pkey PRIMARY KEY (id),
        CONSTRAINT care_specialty_code_key UNIQUE (code)
    )""",
    updated_at_trigger(SCHEMA, "care_specialty"),
]

PROVIDER_TABLES = [
    f"""
    CREATE TABLE care_journey.care_provider (
        {ID_COLUMN},
        user_id uuid,
        specialty_id uuid NOT NULL,
        full_name text NOT NULL,
        crm text NOT NULL,
        city text NOT NULL,
        state text NOT NULL,
        accepts_telemedicine boolean NOT NULL DEFAULT false,
        active boolean NOT NULL DEFAULT true,
        {AUDIT_COLUMNS},
        CONSTRAINT care_provider_pkey PRIMARY KEY (id),
        CONSTRAINT care_provider_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE SET NULL,
        CONSTRAINT care_provider_care_specialty_fk FOREIGN KEY (specialty_id)
            REFERENCES care_journey.care_specialty (id) ON DELETE RESTRICT,
        CONSTRAINT care_provider_crm_check CHECK (btrim(crm) <> ''),
        CONSTRAINT care_provider_state_check CHECK (state IN ({STATE_LIST}))
    )""",
    # A CRM registration identifies one physician; a soft-deleted record frees it.
    "CREATE UNIQUE INDEX care_provider_crm_key ON care_journey.care_provider (crm) "
    "WHERE deleted_at IS NULL",
    "CREATE INDEX care_provider_user_id_idx ON care_journey.care_provider (user_id)",
    # Provider search by specialty and place; also covers the specialty foreign key.
    "CREATE INDEX care_provider_specialty_id_state_city_idx "
    "ON care_journey.care_provider (specialty_id, state, city)",
    "CREATE INDEX care_provider_telemedicine_idx ON care_journey.care_provider (specialty_id) "
    "WHERE accepts_telemedicine AND active AND deleted_at IS NULL",
    updated_at_trigger(SCHEMA, "care_provider"),
]

SLOT_TABLES = [
    f"""
    CREATE TABLE care_journey.care_slot (
        {ID_COLUMN},
        provider_id uuid NOT NULL,
        starts_at timestamptz NOT NULL,
        ends_at timestamptz NOT NULL,
        status text NOT NULL DEFAULT 'open',
        is_telemedicine boolean NOT NULL DEFAULT false,
        {AUDIT_COLUMNS},
        CONSTRAINT care_slot_pkey PRIMARY KEY (id),
        CONSTRAINT care_slot_care_provider_fk FOREIGN KEY (provider_id)
            REFERENCES care_journey.care_provider (id) ON DELETE CASCADE,
        CONSTRAINT care_slot_period_check CHECK (ends_at > starts_at),
        CONSTRAINT care_slot_status_check CHECK (status IN ('open', 'held', 'booked', 'blocked')),
        CONSTRAINT care_slot_no_overlap EXCLUDE USING gist (
            provider_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&
        ) WHERE (deleted_at IS NULL)
    )""",
    # A provider's agenda by date; also covers the provider foreign key.
    "CREATE INDEX care_slot_provider_id_starts_at_idx "
    "ON care_journey.care_slot (provider_id, starts_at)",
    # What can still be booked, by date.
    "CREATE INDEX care_slot_open_starts_at_idx ON care_journey.care_slot (starts_at) "
    "WHERE status = 'open' AND deleted_at IS NULL",
    updated_at_trigger(SCHEMA, "care_slot"),
]

APPOINTMENT_TABLES = [
    f"""
    CREATE TABLE care_journey.care_appointment (
        {ID_COLUMN},
        slot_id uuid NOT NULL,
        provider_id uuid NOT NULL,
        patient_id uuid NOT NULL,
        starts_at timestamptz NOT NULL,
        ends_at timestamptz NOT NULL,
        status text NOT NULL DEFAULT 'held',
        hold_expires_at timestamptz,
        is_telemedicine boolean NOT NULL DEFAULT false,
        reason text,
        cancelled_reason text,
        saga_id uuid,
        {AUDIT_COLUMNS},
        CONSTRAINT care_appointment_pkey PRIMARY KEY (id),
        CONSTRAINT care_appointment_care_slot_fk FOREIGN KEY (slot_id)
            REFERENCES care_journey.care_slot (id) ON DELETE RESTRICT,
        CONSTRAINT care_appointment_care_provider_fk FOREIGN KEY (provider_id)
            REFERENCES care_journey.care_provider (id) ON DELETE RESTRICT,
        CONSTRAINT care_appointment_shared_user_fk FOREIGN KEY (patient_id)
            REFERENCES shared.shared_user (id) ON DELETE RESTRICT,
        CONSTRAINT care_appointment_period_check CHECK (ends_at > starts_at),
        CONSTRAINT care_appointment_status_check CHECK (
            status IN ('held', 'confirmed', 'completed', 'cancelled', 'released', 'billed')
        ),
        CONSTRAINT care_appointment_hold_expires_at_check
            CHECK (status <> 'held' OR hold_expires_at IS NOT NULL),
        CONSTRAINT care_appointment_no_double_booking EXCLUDE USING gist (
            provider_id WITH =, tstzrange(starts_at, ends_at, '[)') WITH &&
        ) WHERE ({LIVE_APPOINTMENT})
    )""",
    # At most one live appointment per slot (the exclusion constraint guards the time).
    f"CREATE UNIQUE INDEX care_appointment_slot_id_key ON care_journey.care_appointment "
    f"(slot_id) WHERE {LIVE_APPOINTMENT}",
    # Every appointment of a slot, whatever its status: the slot foreign key's check.
    "CREATE INDEX care_appointment_slot_id_idx ON care_journey.care_appointment (slot_id)",
    # Date ranges per provider and per patient; they also cover those foreign keys.
    "CREATE INDEX care_appointment_provider_id_starts_at_idx "
    "ON care_journey.care_appointment (provider_id, starts_at)",
    "CREATE INDEX care_appointment_patient_id_starts_at_idx "
    "ON care_journey.care_appointment (patient_id, starts_at)",
    # The hold-expiry worker's scan.
    "CREATE INDEX care_appointment_hold_expires_at_idx "
    "ON care_journey.care_appointment (hold_expires_at) WHERE status = 'held'",
    # The cleanup worker looks for rows whose saga is gone.
    "CREATE INDEX care_appointment_saga_id_idx ON care_journey.care_appointment (saga_id) "
    "WHERE saga_id IS NOT NULL",
    updated_at_trigger(SCHEMA, "care_appointment"),
]


def upgrade() -> None:
    execute(
        [
            f"CREATE SCHEMA {SCHEMA}",
            *EXTENSIONS,
            *REFERENCE_TABLES,
            *PROVIDER_TABLES,
            *SLOT_TABLES,
            *APPOINTMENT_TABLES,
            *inbox_and_outbox(SCHEMA, "care"),
            *grant_schema_to(SCHEMA, SERVICE_ROLE),
        ]
    )


def downgrade() -> None:
    execute([*drop_journey_schema(SCHEMA, SERVICE_ROLE), *DROP_EXTENSIONS])
