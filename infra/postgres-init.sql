-- Runs once, when the compose stack's PostgreSQL volume is first created (docker-entrypoint-initdb.d).
-- POSTGRES_DB creates `dagster` (the Dagster instance); the Iceberg SQL catalog gets its own database.
CREATE DATABASE rag;
