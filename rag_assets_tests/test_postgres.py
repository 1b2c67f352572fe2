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


def _materialize_shard(shard: str) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    from rag_assets.assets import SHARD_ASSETS
    from rag_assets.resources import build_resources

    result = dg.materialize(SHARD_ASSETS, partition_key=shard, instance=dg.DagsterInstance.get(), resources=build_resources(),
                            raise_on_error=False)
    raise SystemExit(0 if result.success else 1)


def test_sixteen_shard_runs_at_once_all_land(tmp_path, monkeypatch, postgres_db):
    """16 processes each run one shard's four assets at the same moment (instance and catalog on
    PostgreSQL): every commit lands, every shard's rows and points are complete, none doubled."""
    import multiprocessing as mp

    from rag_assets.tables import CHUNKS, EMBEDDINGS, VECTOR_INDEX

    env = make_env(tmp_path, monkeypatch, RAG_ICEBERG_URI=catalog_uri(postgres_db), RAG_EMBED_BATCH_SIZE="8")
    config = yaml.safe_load((ROOT / "infra" / "dagster.ecs.yaml").read_text())
    (env.dagster_home / "dagster.yaml").write_text(yaml.safe_dump({k: config[k] for k in ("telemetry", "storage")}))
    shards = [f"s{i:02d}" for i in range(16)]
    for i, shard in enumerate(shards):
        (env.source / shard).mkdir()
        (env.source / shard / "note.md").write_text(f"# Note {i}\n\nShard {shard} keeps {i} lanterns by the harbour wall.\n")
    env.instance().add_dynamic_partitions("shards", shards)
    for spec in ALL_TABLES:  # created once up front, as the first sync does; the race is about commits
        env.resources()["iceberg"].lakehouse().table(spec)

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_materialize_shard, args=(s,)) for s in shards]
    for p in procs:
        p.start()
    for p in procs:
        p.join(420)
    assert [p.exitcode for p in procs] == [0] * len(shards)

    lake = env.resources()["iceberg"].lakehouse()
    for spec in (CHUNKS, EMBEDDINGS, VECTOR_INDEX):
        counts = dict(zip(*pa_counts(lake.table(spec).scan(selected_fields=("shard",)).to_arrow()["shard"])))
        assert counts == {s: 1 for s in shards}, spec.name
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)["shards"]
    assert set(status) == set(shards) and all(row["in_sync"] and row["points"] == 1 for row in status.values())


def pa_counts(column):
    counts = column.value_counts()
    return counts.field("values").to_pylist(), counts.field("counts").to_pylist()
