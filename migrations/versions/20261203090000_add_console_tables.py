"""add console tables: search attributes and the web console's sign-in tokens

Revision ID: 20261203090000
Revises: 20261202190000
Create Date: 2026-12-03 09:00:00

- ``saga_definition.search_attributes``: the payload fields a definition declares
  searchable (``SagaDefinition(..., search_attributes=("user_id", "slot_id"))``); empty
  for the definitions stored before, which keep their content hash.
- ``saga_instance.search_attributes``: those fields' values for one saga, as a JSON object
  of strings, written once when the saga is inserted (a trigger reads the declaration, so
  every way a saga is started, a child saga included, fills it the same way) and never
  changed. NULL when the definition declares none. A GIN index (``jsonb_path_ops``, partial
  on NOT NULL) makes ``search_attributes @> '{"user_id": "..."}'`` an index lookup among
  millions of sagas. The column never changes after the insert, so it does not stop the
  transitions' updates from being HOT. The index is built on a column that is NULL in
  every existing row, so it is empty and takes no time to make.
- ``shared.saga_web_token``: the console's personal sign-in tokens. Only a SHA-256 of the
  token is kept (the token itself is shown once, by ``saga web token create``); each has a
  role (``viewer`` reads, ``operator`` acts), an expiry, and may be revoked.
"""

from __future__ import annotations

from migrations._ddl import AUDIT_COLUMNS, ID_COLUMN, execute, updated_at_trigger

revision = "20261203090000"
down_revision: str | None = "20261202190000"
branch_labels: str | None = None
depends_on: str | None = None

# Scalars only: an object or a list is not something one types into a search box.
SEARCH_ATTRIBUTES_FUNCTION = """
    CREATE FUNCTION shared.saga_instance_search_attributes() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        SELECT (SELECT jsonb_object_agg(a.name, NEW.payload ->> a.name)
                FROM unnest(d.search_attributes) AS a(name)
                WHERE jsonb_typeof(NEW.payload -> a.name) IN ('string', 'number', 'boolean'))
        INTO NEW.search_attributes
        FROM shared.saga_definition d
        WHERE d.id = NEW.saga_definition_id AND d.search_attributes <> '{}';
        RETURN NEW;
    END $$"""

TOKEN_TABLE = f"""
    CREATE TABLE shared.saga_web_token (
        {ID_COLUMN},
        name text NOT NULL,
        role text NOT NULL,
        token_hash text NOT NULL,
        expires_at timestamptz NOT NULL,
        revoked_at timestamptz,
        last_used_at timestamptz,
        created_by text,
        {AUDIT_COLUMNS},
        CONSTRAINT saga_web_token_pkey PRIMARY KEY (id),
        CONSTRAINT saga_web_token_token_hash_key UNIQUE (token_hash),
        CONSTRAINT saga_web_token_role_check CHECK (role IN ('viewer', 'operator')),
        CONSTRAINT saga_web_token_name_check CHECK (length(btrim(name)) BETWEEN 1 AND 100)
    )"""


def upgrade() -> None:
    execute(
        [
            "ALTER TABLE shared.saga_definition "
            "ADD COLUMN search_attributes text[] NOT NULL DEFAULT '{}'",
            "ALTER TABLE shared.saga_instance ADD COLUMN search_attributes jsonb, "
            "ADD CONSTRAINT saga_instance_search_attributes_check "
            "CHECK (jsonb_typeof(search_attributes) = 'object')",
            "CREATE INDEX saga_instance_search_attributes_idx ON shared.saga_instance "
            "USING gin (search_attributes jsonb_path_ops) WHERE search_attributes IS NOT NULL",
            SEARCH_ATTRIBUTES_FUNCTION,
            "CREATE TRIGGER saga_instance_search_attributes BEFORE INSERT "
            "ON shared.saga_instance FOR EACH ROW "
            "EXECUTE FUNCTION shared.saga_instance_search_attributes()",
            "GRANT EXECUTE ON FUNCTION shared.saga_instance_search_attributes() "
            "TO austa_saga_coordinator",
            TOKEN_TABLE,
            "CREATE INDEX saga_web_token_name_idx ON shared.saga_web_token (name)",
            updated_at_trigger("shared", "saga_web_token"),
            "GRANT SELECT, UPDATE ON shared.saga_web_token TO austa_saga_coordinator",
        ]
    )


def downgrade() -> None:
    execute(
        [
            "DROP TABLE shared.saga_web_token",
            "DROP TRIGGER saga_instance_search_attributes ON shared.saga_instance",
            "DROP FUNCTION shared.saga_instance_search_attributes()",
            "DROP INDEX shared.saga_instance_search_attributes_idx",
            "ALTER TABLE shared.saga_instance DROP CONSTRAINT "
            "saga_instance_search_attributes_check, DROP COLUMN search_attributes",
            "ALTER TABLE shared.saga_definition DROP COLUMN search_attributes",
        ]
    )
