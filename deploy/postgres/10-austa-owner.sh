#!/bin/sh
# Runs once, as PostgreSQL's superuser, when the postgres service first makes its data
# directory (the image runs /docker-entrypoint-initdb.d/*): the migration owner DB_USER and
# the database DB_NAME it owns. The owner is not a superuser: CREATEROLE to make the
# service roles and set their passwords, CREATEDB for the restore drill's scratch database.
# Everything after this (migrations, seeds, role passwords) is `saga db setup`, as the
# owner. Extensions only a superuser may create are created here, when the server has them.
set -eu
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "${POSTGRES_USER:-postgres}" --dbname postgres \
    -v owner="$DB_USER" -v password="$DB_PASSWORD" -v database="$DB_NAME" <<'SQL'
-- Neither the statement log nor pg_stat_statements keeps the password's statement.
SET log_statement = 'none';
SELECT set_config('pg_stat_statements.track_utility', 'off', false)
WHERE current_setting('pg_stat_statements.track_utility', true) IS NOT NULL;
CREATE ROLE :"owner" LOGIN CREATEROLE CREATEDB NOSUPERUSER PASSWORD :'password';
CREATE DATABASE :"database" OWNER :"owner";
\connect :"database"
-- TimescaleDB (the health journey's metrics become a hypertable) and the statistics view.
SELECT EXISTS (SELECT FROM pg_available_extensions WHERE name = 'timescaledb') AS timescaledb,
       EXISTS (SELECT FROM pg_available_extensions WHERE name = 'pg_stat_statements')
           AS pg_stat_statements
\gset
\if :timescaledb
CREATE EXTENSION IF NOT EXISTS timescaledb;
\endif
\if :pg_stat_statements
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
\endif
SQL
