"""add plan journey schema: plans, coverage, pre-authorizations, claims, credits, audit, RLS

Revision ID: 20261125150300
Revises: 20261125150200
Create Date: 2026-11-25 15:03:00
"""

from __future__ import annotations

from migrations._ddl import (
    AUDIT_COLUMNS,
    ID_COLUMN,
    append_only_trigger,
    drop_journey_schema,
    execute,
    grant_schema_to,
    inbox_and_outbox,
    updated_at_trigger,
)

revision = "20261125150300"
down_revision: str | None = "20261125150200"
branch_labels: str | None = None
depends_on: str | None = None

SCHEMA = "plan_journey"
SERVICE_ROLE = "austa_plan_journey"
MEMBER_ROLE = "austa_plan_member"

# Every insurance table: each change to one of them lands in plan_audit_log.
AUDITED_TABLES = (
    "plan_insurance_plan",
    "plan_member_coverage",
    "plan_pre_authorization",
    "plan_claim",
    "plan_wellness_credit",
)
# Tables holding one member's data, read by members under row-level security.
MEMBER_TABLES = (
    "plan_member_coverage",
    "plan_pre_authorization",
    "plan_claim",
    "plan_wellness_credit",
)

# The member a request acts for, set per transaction by the API:
# SELECT set_config('app.current_member_id', '<uuid>', true). NULL when unset.
CURRENT_MEMBER = "nullif(current_setting('app.current_member_id', true), '')::uuid"

PLAN_TABLES = [
    f"""
    CREATE TABLE plan_journey.plan_insurance_plan (
        {ID_COLUMN},
        code text NOT NULL,
        name text NOT NULL,
        plan_type text NOT NULL,
        annual_limit_cents bigint NOT NULL,
        copay_percent numeric(5, 2) NOT NULL DEFAULT 0,
        active boolean NOT NULL DEFAULT true,
        {AUDIT_COLUMNS},
        CONSTRAINT plan_insurance_plan_pkey PRIMARY KEY (id),
        CONSTRAINT plan_insurance_plan_code_key UNIQUE (code),
        CONSTRAINT plan_insurance_plan_plan_type_check
            CHECK (plan_type IN ('basic', 'standard', 'premium', 'corporate')),
        CONSTRAINT plan_insurance_plan_annual_limit_cents_check CHECK (annual_limit_cents > 0),
        CONSTRAINT plan_insurance_plan_copay_percent_check
            CHECK (copay_percent BETWEEN 0 AND 100)
    )""",
    f"""
    CREATE TABLE plan_journey.plan_member_coverage (
        {ID_COLUMN},
        user_id uuid NOT NULL,
        insurance_plan_id uuid NOT NULL,
        policy_number text NOT NULL,
        period_start date NOT NULL,
        period_end date NOT NULL,
        annual_limit_cents bigint NOT NULL,
        used_cents bigint NOT NULL DEFAULT 0,
        reserved_cents bigint NOT NULL DEFAULT 0,
        status text NOT NULL DEFAULT 'active',
        {AUDIT_COLUMNS},
        CONSTRAINT plan_member_coverage_pkey PRIMARY KEY (id),
        CONSTRAINT plan_member_coverage_policy_number_key UNIQUE (policy_number),
        CONSTRAINT plan_member_coverage_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE RESTRICT,
        CONSTRAINT plan_member_coverage_plan_insurance_plan_fk FOREIGN KEY (insurance_plan_id)
            REFERENCES plan_journey.plan_insurance_plan (id) ON DELETE RESTRICT,
        CONSTRAINT plan_member_coverage_period_check CHECK (period_end >= period_start),
        CONSTRAINT plan_member_coverage_annual_limit_cents_check CHECK (annual_limit_cents > 0),
        -- No plan pays past its limit.
        CONSTRAINT plan_member_coverage_used_cents_check
            CHECK (used_cents >= 0 AND used_cents <= annual_limit_cents),
        -- Nor promises past it: approved pre-authorizations not yet claimed are reserved.
        CONSTRAINT plan_member_coverage_reserved_cents_check
            CHECK (reserved_cents >= 0 AND used_cents + reserved_cents <= annual_limit_cents),
        CONSTRAINT plan_member_coverage_status_check
            CHECK (status IN ('active', 'suspended', 'cancelled'))
    )""",
    "CREATE INDEX plan_member_coverage_user_id_status_idx "
    "ON plan_journey.plan_member_coverage (user_id, status)",
    "CREATE INDEX plan_member_coverage_insurance_plan_id_idx "
    "ON plan_journey.plan_member_coverage (insurance_plan_id)",
    # The coverage a member has on a date: the authorization step's lookup.
    "CREATE INDEX plan_member_coverage_active_idx "
    "ON plan_journey.plan_member_coverage (user_id, period_start, period_end) "
    "WHERE status = 'active' AND deleted_at IS NULL",
    f"""
    CREATE TABLE plan_journey.plan_pre_authorization (
        {ID_COLUMN},
        member_coverage_id uuid NOT NULL,
        user_id uuid NOT NULL,
        -- care_journey.care_appointment (id): another service's schema, so no foreign key.
        appointment_id uuid,
        amount_cents bigint NOT NULL,
        status text NOT NULL DEFAULT 'pending',
        decision_reason text,
        expires_at timestamptz,
        decided_at timestamptz,
        saga_id uuid,
        {AUDIT_COLUMNS},
        CONSTRAINT plan_pre_authorization_pkey PRIMARY KEY (id),
        CONSTRAINT plan_pre_authorization_plan_member_coverage_fk FOREIGN KEY (member_coverage_id)
            REFERENCES plan_journey.plan_member_coverage (id) ON DELETE RESTRICT,
        CONSTRAINT plan_pre_authorization_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE RESTRICT,
        CONSTRAINT plan_pre_authorization_amount_cents_check CHECK (amount_cents > 0),
        CONSTRAINT plan_pre_authorization_status_check
            CHECK (status IN ('pending', 'approved', 'denied', 'voided')),
        CONSTRAINT plan_pre_authorization_decided_check
            CHECK (status NOT IN ('approved', 'denied') OR decided_at IS NOT NULL),
        CONSTRAINT plan_pre_authorization_denied_check
            CHECK (status <> 'denied' OR decision_reason IS NOT NULL)
    )""",
    "CREATE INDEX plan_pre_authorization_member_coverage_id_idx "
    "ON plan_journey.plan_pre_authorization (member_coverage_id)",
    "CREATE INDEX plan_pre_authorization_user_id_created_at_idx "
    "ON plan_journey.plan_pre_authorization (user_id, created_at)",
    # One live authorization per appointment: a repeated step finds it instead of a twin.
    "CREATE UNIQUE INDEX plan_pre_authorization_appointment_id_key "
    "ON plan_journey.plan_pre_authorization (appointment_id) "
    "WHERE appointment_id IS NOT NULL AND status IN ('pending', 'approved') "
    "AND deleted_at IS NULL",
    "CREATE INDEX plan_pre_authorization_saga_id_idx "
    "ON plan_journey.plan_pre_authorization (saga_id) WHERE saga_id IS NOT NULL",
    # Pending decisions by saga, and by when they lapse: the workers' scans.
    "CREATE INDEX plan_pre_authorization_pending_saga_id_idx "
    "ON plan_journey.plan_pre_authorization (saga_id, expires_at) WHERE status = 'pending'",
    f"""
    CREATE TABLE plan_journey.plan_claim (
        {ID_COLUMN},
        member_coverage_id uuid NOT NULL,
        user_id uuid NOT NULL,
        -- care_journey.care_appointment (id): another service's schema, so no foreign key.
        appointment_id uuid,
        pre_authorization_id uuid,
        amount_cents bigint NOT NULL,
        approved_cents bigint,
        service_date date NOT NULL,
        submitted_at timestamptz NOT NULL DEFAULT now(),
        status text NOT NULL DEFAULT 'submitted',
        procedure_code text NOT NULL,
        diagnosis_code text,
        rejection_reason text,
        decided_at timestamptz,
        saga_id uuid,
        {AUDIT_COLUMNS},
        CONSTRAINT plan_claim_pkey PRIMARY KEY (id),
        CONSTRAINT plan_claim_plan_member_coverage_fk FOREIGN KEY (member_coverage_id)
            REFERENCES plan_journey.plan_member_coverage (id) ON DELETE RESTRICT,
        CONSTRAINT plan_claim_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE RESTRICT,
        CONSTRAINT plan_claim_plan_pre_authorization_fk FOREIGN KEY (pre_authorization_id)
            REFERENCES plan_journey.plan_pre_authorization (id) ON DELETE SET NULL,
        CONSTRAINT plan_claim_amount_cents_check CHECK (amount_cents > 0),
        CONSTRAINT plan_claim_approved_cents_check
            CHECK (approved_cents IS NULL OR approved_cents BETWEEN 0 AND amount_cents),
        CONSTRAINT plan_claim_approved_check
            CHECK (status NOT IN ('approved', 'paid') OR approved_cents IS NOT NULL),
        -- A service is claimed after it happened; dates are Brazilian (the operator's).
        CONSTRAINT plan_claim_service_date_check
            CHECK (service_date <= (submitted_at AT TIME ZONE 'America/Sao_Paulo')::date),
        CONSTRAINT plan_claim_status_check CHECK (
            status IN ('submitted', 'under_review', 'approved', 'rejected', 'paid', 'cancelled')
        ),
        CONSTRAINT plan_claim_rejection_reason_check
            CHECK ((status = 'rejected') = (rejection_reason IS NOT NULL)),
        -- TUSS procedure codes have 8 digits.
        CONSTRAINT plan_claim_procedure_code_check CHECK (procedure_code ~ '^[0-9]{{8}}$'),
        -- ICD-10 (CID-10): letter, two digits, optional subcategory (J45, J45.0, J450).
        CONSTRAINT plan_claim_diagnosis_code_check CHECK (
            diagnosis_code IS NULL OR diagnosis_code ~ '^[A-Z][0-9]{{2}}(\\.?[0-9A-Z]{{1,4}})?$'
        )
    )""",
    "CREATE INDEX plan_claim_member_coverage_id_idx "
    "ON plan_journey.plan_claim (member_coverage_id)",
    "CREATE INDEX plan_claim_user_id_submitted_at_idx "
    "ON plan_journey.plan_claim (user_id, submitted_at)",
    "CREATE INDEX plan_claim_pre_authorization_id_idx "
    "ON plan_journey.plan_claim (pre_authorization_id)",
    # The review queue and status reports.
    "CREATE INDEX plan_claim_status_submitted_at_idx "
    "ON plan_journey.plan_claim (status, submitted_at) WHERE deleted_at IS NULL",
    # One live claim per appointment; a rejected or cancelled one may be submitted again.
    "CREATE UNIQUE INDEX plan_claim_appointment_id_key ON plan_journey.plan_claim "
    "(appointment_id) WHERE appointment_id IS NOT NULL "
    "AND status NOT IN ('rejected', 'cancelled') AND deleted_at IS NULL",
    "CREATE INDEX plan_claim_saga_id_idx ON plan_journey.plan_claim (saga_id) "
    "WHERE saga_id IS NOT NULL",
    f"""
    CREATE TABLE plan_journey.plan_wellness_credit (
        {ID_COLUMN},
        member_coverage_id uuid NOT NULL,
        user_id uuid NOT NULL,
        amount_cents bigint NOT NULL,
        reason text NOT NULL,
        -- health_journey.health_goal (id): another service's schema, so no foreign key.
        source_goal_id uuid,
        status text NOT NULL DEFAULT 'applied',
        reversed_at timestamptz,
        saga_id uuid,
        {AUDIT_COLUMNS},
        CONSTRAINT plan_wellness_credit_pkey PRIMARY KEY (id),
        CONSTRAINT plan_wellness_credit_plan_member_coverage_fk FOREIGN KEY (member_coverage_id)
            REFERENCES plan_journey.plan_member_coverage (id) ON DELETE RESTRICT,
        CONSTRAINT plan_wellness_credit_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE RESTRICT,
        CONSTRAINT plan_wellness_credit_amount_cents_check CHECK (amount_cents > 0),
        CONSTRAINT plan_wellness_credit_status_check CHECK (status IN ('applied', 'reversed')),
        CONSTRAINT plan_wellness_credit_reversed_check
            CHECK ((status = 'reversed') = (reversed_at IS NOT NULL))
    )""",
    "CREATE INDEX plan_wellness_credit_member_coverage_id_idx "
    "ON plan_journey.plan_wellness_credit (member_coverage_id)",
    "CREATE INDEX plan_wellness_credit_user_id_created_at_idx "
    "ON plan_journey.plan_wellness_credit (user_id, created_at)",
    # One applied credit per completed goal.
    "CREATE UNIQUE INDEX plan_wellness_credit_source_goal_id_key "
    "ON plan_journey.plan_wellness_credit (source_goal_id) "
    "WHERE source_goal_id IS NOT NULL AND status = 'applied' AND deleted_at IS NULL",
    "CREATE INDEX plan_wellness_credit_saga_id_idx ON plan_journey.plan_wellness_credit "
    "(saga_id) WHERE saga_id IS NOT NULL",
]

AUDIT_LOG = [
    f"""
    CREATE TABLE plan_journey.plan_audit_log (
        {ID_COLUMN},
        table_name text NOT NULL,
        row_id uuid NOT NULL,
        operation text NOT NULL,
        old_row jsonb,
        new_row jsonb,
        changed_by text NOT NULL DEFAULT current_user,
        -- The member whose data changed (the row's user_id), and the member the change
        -- was made for (app.current_member_id); both NULL where they do not apply.
        member_id uuid,
        acting_member_id uuid,
        saga_id uuid,
        changed_at timestamptz NOT NULL DEFAULT now(),
        {AUDIT_COLUMNS},
        CONSTRAINT plan_audit_log_pkey PRIMARY KEY (id),
        CONSTRAINT plan_audit_log_operation_check
            CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
        CONSTRAINT plan_audit_log_rows_check CHECK (
            (operation = 'INSERT' AND old_row IS NULL AND new_row IS NOT NULL)
            OR (operation = 'UPDATE' AND old_row IS NOT NULL AND new_row IS NOT NULL)
            OR (operation = 'DELETE' AND old_row IS NOT NULL AND new_row IS NULL)
        )
    )""",
    # A row's history, in order.
    "CREATE INDEX plan_audit_log_table_name_row_id_changed_at_idx "
    "ON plan_journey.plan_audit_log (table_name, row_id, changed_at)",
    "CREATE INDEX plan_audit_log_member_id_changed_at_idx "
    "ON plan_journey.plan_audit_log (member_id, changed_at) WHERE member_id IS NOT NULL",
    "CREATE INDEX plan_audit_log_acting_member_id_changed_at_idx "
    "ON plan_journey.plan_audit_log (acting_member_id, changed_at) "
    "WHERE acting_member_id IS NOT NULL",
    "CREATE INDEX plan_audit_log_saga_id_idx ON plan_journey.plan_audit_log (saga_id) "
    "WHERE saga_id IS NOT NULL",
    # Investigations search the recorded values ("which changes set status = 'paid'").
    "CREATE INDEX plan_audit_log_new_row_idx ON plan_journey.plan_audit_log "
    "USING gin (new_row jsonb_path_ops)",
    updated_at_trigger(SCHEMA, "plan_audit_log"),
    append_only_trigger(SCHEMA, "plan_audit_log"),
    # SECURITY DEFINER: the log is written with the owner's rights, so the service role
    # needs (and gets, below) no write privilege on it and cannot forge or erase entries.
    # Inside it current_user is the owner, so changed_by names the caller's role from the
    # `role` setting (SET ROLE), else the session user (a service logged in as itself).
    f"""
    CREATE FUNCTION plan_journey.record_audit() RETURNS trigger
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, plan_journey AS $$
    DECLARE
        old_row jsonb;
        new_row jsonb;
        changed_row jsonb;
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            old_row := to_jsonb(OLD);
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            new_row := to_jsonb(NEW);
        END IF;
        changed_row := coalesce(new_row, old_row);
        INSERT INTO plan_journey.plan_audit_log (
            table_name, row_id, operation, old_row, new_row, changed_by,
            member_id, acting_member_id, saga_id
        ) VALUES (
            TG_TABLE_NAME,
            (changed_row ->> 'id')::uuid,
            TG_OP,
            old_row,
            new_row,
            CASE WHEN current_setting('role') = 'none' THEN session_user::text
                 ELSE current_setting('role') END,
            (changed_row ->> 'user_id')::uuid,
            {CURRENT_MEMBER},
            coalesce(
                new_row ->> 'saga_id',
                old_row ->> 'saga_id',
                nullif(current_setting('app.saga_id', true), '')
            )::uuid
        );
        RETURN NULL;
    END $$""",
    *(
        f"CREATE TRIGGER {table}_audit AFTER INSERT OR UPDATE OR DELETE "
        f"ON plan_journey.{table} FOR EACH ROW EXECUTE FUNCTION plan_journey.record_audit()"
        for table in AUDITED_TABLES
    ),
]

TRIGGERS = [updated_at_trigger(SCHEMA, table) for table in AUDITED_TABLES]

# Row-level security keyed on the acting member. Not FORCEd: the owner (migrations) keeps
# bypassing it; the service role sees everything through its permissive policy; members
# (austa_plan_member) see their own rows only.
ROW_LEVEL_SECURITY = [
    *(
        statement
        for table in (*MEMBER_TABLES, "plan_audit_log")
        for statement in (
            f"ALTER TABLE plan_journey.{table} ENABLE ROW LEVEL SECURITY",
            f"CREATE POLICY {table}_service_all ON plan_journey.{table} "
            f"FOR ALL TO {SERVICE_ROLE} USING (true) WITH CHECK (true)",
        )
    ),
    *(
        f"CREATE POLICY {table}_member_own ON plan_journey.{table} "
        f"FOR SELECT TO {MEMBER_ROLE} USING (user_id = {CURRENT_MEMBER})"
        for table in MEMBER_TABLES
    ),
    # A member sees the history of their own rows and of changes made on their behalf.
    f"CREATE POLICY plan_audit_log_member_own ON plan_journey.plan_audit_log "
    f"FOR SELECT TO {MEMBER_ROLE} "
    f"USING (member_id = {CURRENT_MEMBER} OR acting_member_id = {CURRENT_MEMBER})",
]

GRANTS = [
    *grant_schema_to(SCHEMA, SERVICE_ROLE),
    # The audit log is written only by plan_journey.record_audit().
    f"REVOKE INSERT, UPDATE, DELETE ON plan_journey.plan_audit_log FROM {SERVICE_ROLE}",
    f"GRANT USAGE ON SCHEMA {SCHEMA} TO {MEMBER_ROLE}",
    "GRANT SELECT ON "
    + ", ".join(f"plan_journey.{t}" for t in (*AUDITED_TABLES, "plan_audit_log"))
    + f" TO {MEMBER_ROLE}",
]


def upgrade() -> None:
    execute(
        [
            f"CREATE SCHEMA {SCHEMA}",
            *PLAN_TABLES,
            *AUDIT_LOG,
            *TRIGGERS,
            *ROW_LEVEL_SECURITY,
            *inbox_and_outbox(SCHEMA, "plan"),
            *GRANTS,
        ]
    )


def downgrade() -> None:
    execute(drop_journey_schema(SCHEMA, SERVICE_ROLE))
