"""add gamification schema: profiles, append-only points ledger, achievements, events, leaderboard

Revision ID: 20261125150400
Revises: 20261125150300
Create Date: 2026-11-25 15:04:00
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

revision = "20261125150400"
down_revision: str | None = "20261125150300"
branch_labels: str | None = None
depends_on: str | None = None

SCHEMA = "gamification"
SERVICE_ROLE = "austa_gamification"

JOURNEY_LIST = "'health', 'care', 'plan', 'gamification'"

PROFILE_TABLES = [
    f"""
    CREATE TABLE gamification.gamification_profile (
        {ID_COLUMN},
        user_id uuid NOT NULL,
        display_name text NOT NULL,
        xp bigint NOT NULL DEFAULT 0,
        level integer NOT NULL DEFAULT 1,
        {AUDIT_COLUMNS},
        CONSTRAINT gamification_profile_pkey PRIMARY KEY (id),
        CONSTRAINT gamification_profile_user_id_key UNIQUE (user_id),
        CONSTRAINT gamification_profile_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE CASCADE,
        -- XP never goes below zero: a revoke larger than what is left is refused.
        CONSTRAINT gamification_profile_xp_check CHECK (xp >= 0),
        CONSTRAINT gamification_profile_level_check CHECK (level >= 1)
    )""",
    "CREATE INDEX gamification_profile_xp_idx ON gamification.gamification_profile (xp DESC) "
    "WHERE deleted_at IS NULL",
    updated_at_trigger(SCHEMA, "gamification_profile"),
]

LEDGER_TABLES = [
    f"""
    CREATE TABLE gamification.gamification_points_ledger (
        {ID_COLUMN},
        profile_id uuid NOT NULL,
        points integer NOT NULL,
        reason text NOT NULL,
        source_journey text NOT NULL,
        source_ref text NOT NULL,
        saga_id uuid,
        reverses_entry_id uuid,
        {AUDIT_COLUMNS},
        CONSTRAINT gamification_points_ledger_pkey PRIMARY KEY (id),
        CONSTRAINT gamification_points_ledger_gamification_profile_fk FOREIGN KEY (profile_id)
            REFERENCES gamification.gamification_profile (id) ON DELETE RESTRICT,
        -- RESTRICT, not SET NULL: the ledger is append-only, so no cascade may rewrite it.
        CONSTRAINT gamification_points_ledger_gamification_points_ledger_fk
            FOREIGN KEY (reverses_entry_id)
            REFERENCES gamification.gamification_points_ledger (id) ON DELETE RESTRICT,
        -- An entry is reversed at most once.
        CONSTRAINT gamification_points_ledger_reverses_entry_id_key UNIQUE (reverses_entry_id),
        -- Negative points are a compensating revoke; zero records nothing.
        CONSTRAINT gamification_points_ledger_points_check CHECK (points <> 0),
        CONSTRAINT gamification_points_ledger_source_journey_check
            CHECK (source_journey IN ({JOURNEY_LIST})),
        CONSTRAINT gamification_points_ledger_reverses_entry_id_check
            CHECK (reverses_entry_id <> id)
    )""",
    "CREATE INDEX gamification_points_ledger_profile_id_created_at_idx "
    "ON gamification.gamification_points_ledger (profile_id, created_at)",
    # Exactly once per saga: one award and one revoke for a saga's source, no more. It also
    # serves the cleanup worker's look-up by saga.
    "CREATE UNIQUE INDEX gamification_points_ledger_saga_id_source_ref_key "
    "ON gamification.gamification_points_ledger (saga_id, source_ref, (points > 0)) "
    "WHERE saga_id IS NOT NULL",
    updated_at_trigger(SCHEMA, "gamification_points_ledger"),
    append_only_trigger(SCHEMA, "gamification_points_ledger"),
    # XP is the sum of the ledger, kept in the same transaction as the entry; the profile's
    # CHECK (xp >= 0) refuses an entry that would take it below zero.
    """
    CREATE FUNCTION gamification.apply_ledger_points() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE gamification.gamification_profile
        SET xp = xp + NEW.points
        WHERE id = NEW.profile_id;
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER gamification_points_ledger_apply_points "
    "AFTER INSERT ON gamification.gamification_points_ledger "
    "FOR EACH ROW EXECUTE FUNCTION gamification.apply_ledger_points()",
    # ... and only through the ledger: a profile starts at 0 XP, and a statement that sets
    # xp directly is refused (the ledger trigger's update runs one trigger level deeper).
    """
    CREATE FUNCTION gamification.guard_profile_xp() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF pg_trigger_depth() = 1 AND (
            (TG_OP = 'INSERT' AND NEW.xp <> 0)
            OR (TG_OP = 'UPDATE' AND NEW.xp IS DISTINCT FROM OLD.xp)
        ) THEN
            RAISE EXCEPTION 'gamification_profile.xp is the sum of the points ledger'
                USING ERRCODE = 'restrict_violation',
                      HINT = 'insert a gamification_points_ledger row instead';
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER gamification_profile_xp_guard "
    "BEFORE INSERT OR UPDATE OF xp ON gamification.gamification_profile "
    "FOR EACH ROW EXECUTE FUNCTION gamification.guard_profile_xp()",
]

ACHIEVEMENT_TABLES = [
    f"""
    CREATE TABLE gamification.gamification_achievement (
        {ID_COLUMN},
        code text NOT NULL,
        name text NOT NULL,
        description text NOT NULL DEFAULT '',
        points_reward integer NOT NULL DEFAULT 0,
        journey text NOT NULL,
        {AUDIT_COLUMNS},
        CONSTRAINT gamification_achievement_pkey PRIMARY KEY (id),
        CONSTRAINT gamification_achievement_code_key UNIQUE (code),
        CONSTRAINT gamification_achievement_points_reward_check CHECK (points_reward >= 0),
        CONSTRAINT gamification_achievement_journey_check CHECK (journey IN ({JOURNEY_LIST}))
    )""",
    updated_at_trigger(SCHEMA, "gamification_achievement"),
    f"""
    CREATE TABLE gamification.gamification_user_achievement (
        {ID_COLUMN},
        profile_id uuid NOT NULL,
        achievement_id uuid NOT NULL,
        granted_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz,
        saga_id uuid,
        {AUDIT_COLUMNS},
        CONSTRAINT gamification_user_achievement_pkey PRIMARY KEY (id),
        CONSTRAINT gamification_user_achievement_gamification_profile_fk FOREIGN KEY (profile_id)
            REFERENCES gamification.gamification_profile (id) ON DELETE CASCADE,
        CONSTRAINT gamification_user_achievement_gamification_achievement_fk
            FOREIGN KEY (achievement_id)
            REFERENCES gamification.gamification_achievement (id) ON DELETE RESTRICT,
        CONSTRAINT gamification_user_achievement_revoked_at_check
            CHECK (revoked_at IS NULL OR revoked_at >= granted_at)
    )""",
    "CREATE INDEX gamification_user_achievement_profile_id_granted_at_idx "
    "ON gamification.gamification_user_achievement (profile_id, granted_at)",
    "CREATE INDEX gamification_user_achievement_achievement_id_idx "
    "ON gamification.gamification_user_achievement (achievement_id)",
    # One live grant of an achievement per profile; a revoked one may be granted again.
    "CREATE UNIQUE INDEX gamification_user_achievement_profile_id_achievement_id_key "
    "ON gamification.gamification_user_achievement (profile_id, achievement_id) "
    "WHERE revoked_at IS NULL AND deleted_at IS NULL",
    "CREATE INDEX gamification_user_achievement_saga_id_idx "
    "ON gamification.gamification_user_achievement (saga_id) WHERE saga_id IS NOT NULL",
    updated_at_trigger(SCHEMA, "gamification_user_achievement"),
]

# High-volume history, partitioned by month so old months can be detached or dropped
# whole. Partitions are made ahead (the maintenance worker keeps doing so); the DEFAULT
# partition takes anything outside them, so no event is ever refused.
EVENT_TABLES = [
    f"""
    CREATE TABLE gamification.gamification_event (
        {ID_COLUMN},
        user_id uuid NOT NULL,
        event_type text NOT NULL,
        source_journey text NOT NULL,
        payload jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        saga_id uuid,
        occurred_at timestamptz NOT NULL DEFAULT now(),
        {AUDIT_COLUMNS},
        CONSTRAINT gamification_event_pkey PRIMARY KEY (id, occurred_at),
        CONSTRAINT gamification_event_shared_user_fk FOREIGN KEY (user_id)
            REFERENCES shared.shared_user (id) ON DELETE CASCADE,
        CONSTRAINT gamification_event_source_journey_check
            CHECK (source_journey IN ({JOURNEY_LIST})),
        CONSTRAINT gamification_event_payload_check CHECK (jsonb_typeof(payload) = 'object')
    ) PARTITION BY RANGE (occurred_at)""",
    "SELECT shared.create_monthly_partitions('gamification.gamification_event', 1, 3)",
    "CREATE TABLE gamification.gamification_event_default "
    "PARTITION OF gamification.gamification_event DEFAULT",
    # Indexes and the trigger on the parent: PostgreSQL clones them to every partition.
    "CREATE INDEX gamification_event_user_id_occurred_at_idx "
    "ON gamification.gamification_event (user_id, occurred_at DESC)",
    "CREATE INDEX gamification_event_event_type_occurred_at_idx "
    "ON gamification.gamification_event (event_type, occurred_at DESC)",
    "CREATE INDEX gamification_event_payload_idx ON gamification.gamification_event "
    "USING gin (payload jsonb_path_ops)",
    "CREATE INDEX gamification_event_saga_id_idx ON gamification.gamification_event (saga_id) "
    "WHERE saga_id IS NOT NULL",
    updated_at_trigger(SCHEMA, "gamification_event"),
]

# The unique index lets the view be refreshed CONCURRENTLY (readers are never blocked).
# Refreshing needs ownership (before PostgreSQL 17), so the service calls
# gamification.refresh_leaderboard(), which runs with the owner's rights.
LEADERBOARD = [
    """
    CREATE MATERIALIZED VIEW gamification.gamification_leaderboard AS
    SELECT rank() OVER (ORDER BY p.xp DESC) AS rank,
           p.user_id,
           p.id AS profile_id,
           p.display_name,
           p.xp,
           p.level
    FROM gamification.gamification_profile p
    WHERE p.deleted_at IS NULL
    WITH DATA""",
    "CREATE UNIQUE INDEX gamification_leaderboard_user_id_key "
    "ON gamification.gamification_leaderboard (user_id)",
    "CREATE INDEX gamification_leaderboard_rank_idx "
    "ON gamification.gamification_leaderboard (rank)",
    """
    CREATE FUNCTION gamification.refresh_leaderboard() RETURNS void
    LANGUAGE plpgsql SECURITY DEFINER
    SET search_path = pg_catalog, gamification AS $$
    BEGIN
        REFRESH MATERIALIZED VIEW CONCURRENTLY gamification.gamification_leaderboard;
    END $$""",
    "REVOKE EXECUTE ON FUNCTION gamification.refresh_leaderboard() FROM PUBLIC",
]

GRANTS = [
    *grant_schema_to(SCHEMA, SERVICE_ROLE),
    # grant_schema_to gave it write privileges on every relation; a view is only read.
    f"REVOKE ALL ON gamification.gamification_leaderboard FROM {SERVICE_ROLE}",
    f"GRANT SELECT ON gamification.gamification_leaderboard TO {SERVICE_ROLE}",
]


def upgrade() -> None:
    execute(
        [
            f"CREATE SCHEMA {SCHEMA}",
            *PROFILE_TABLES,
            *LEDGER_TABLES,
            *ACHIEVEMENT_TABLES,
            *EVENT_TABLES,
            *LEADERBOARD,
            *inbox_and_outbox(SCHEMA, "gamification"),
            *GRANTS,
        ]
    )


def downgrade() -> None:
    execute(drop_journey_schema(SCHEMA, SERVICE_ROLE))
