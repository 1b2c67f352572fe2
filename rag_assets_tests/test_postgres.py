"""Production storage on the machine's PostgreSQL: the Dagster instance (dagster-postgres, as in
infra/dagster.ecs.yaml) and the Iceberg SQL catalog, by configuration only."""

import json
from pathlib import Path

import dagster as dg
import yaml
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.sync import run_sync
from rag_assets.tables import ALL_TABLES
from rag_assets_tests.conftest import PG, make_env, write_corpus
from rag_assets_tests.test_concurrency_and_server import commit_shards_at_once

ROOT = Path(__file__).parents[1]


def catalog_uri(db: str) -> str:
    return f"postgresql+psycopg2://{PG['user']}@{PG['host']}:{PG['port']}/{db}"


def test_sync_with_instance_and_catalog_on_postgres(tmp_path, monkeypatch, postgres_db):
    env = make_env(tmp_path, monkeypatch, RAG_ICEBERG_URI=catalog_uri(postgres_db), RAG_ICEBERG_WAREHOUSE=(tmp_path / "wh").as_uri())
    (tmp_path / "wh").mkdir()
    config = yaml.safe_load((ROOT / "infra" / "dagster.ecs.yaml").read_text())
    (env.dagster_home / "dagster.yaml").write_text(yaml.safe_dump({k: config[k] for k in ("telemetry", "storage")}))
    write_corpus(env.source)

    instance = env.instance()
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    report = run_sync(instance, env.resources()).as_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == {"alpha": "new", "beta": "new", "gamma": "new"}
    assert report["totals"]["failed"] == 0

    lake = env.resources()["iceberg"].lakehouse()
    assert lake.catalog.engine.dialect.name == "postgresql"
    assert {s for spec in ALL_TABLES for s in lake.table(spec).scan(selected_fields=("shard",)).to_arrow()["shard"].to_pylist()} == {"alpha", "beta", "gamma"}
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)["shards"]
    assert all(row["in_sync"] for row in status.values()) and set(status) == {"alpha", "beta", "gamma"}
    # A second sync finds nothing to do: the state that decides it lives in the Postgres instance.
    again = run_sync(dg.DagsterInstance.get(), env.resources()).as_json()
    assert {r["status"] for r in again["shards"].values()} == {"unchanged"}


def test_sixteen_processes_commit_different_shards_of_one_table_on_postgres(tmp_path, postgres_db):
    (tmp_path / "wh").mkdir()
    commit_shards_at_once({"type": "sql", "uri": catalog_uri(postgres_db), "warehouse": (tmp_path / "wh").as_uri()}, 16)
