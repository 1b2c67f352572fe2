"""Production storage on the machine's PostgreSQL: the Dagster instance (dagster-postgres, as in
infra/dagster.ecs.yaml) and the Iceberg SQL catalog, by configuration only."""

import json
import os
from pathlib import Path

import dagster as dg
import yaml
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.sync import run_sync
from rag_assets.tables import ALL_TABLES
from rag_assets_tests.conftest import PG, make_env, write_corpus

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


def _materialize_shard(shard: str) -> None:
    from rag_assets.defs.assets import SHARD_ASSETS
    from rag_assets.defs.resources import build_resources

    result = dg.materialize(SHARD_ASSETS, partition_key=shard, instance=dg.DagsterInstance.get(), resources=build_resources(),
                            raise_on_error=False)
    os._exit(0 if result.success else 1)


def run_shards_at_once(shards: list[str]) -> None:
    """Entry point of a fresh interpreter: import the heavy modules once, fork one process per shard,
    exit non-zero unless every run succeeded. Forking from pytest's own process is unsafe once an earlier
    test has run torch (its OpenMP pool does not survive a fork); this interpreter never runs torch."""
    import multiprocessing as mp

    import sentence_transformers  # noqa: F401 - imported before the fork, used by the children
    import torch  # noqa: F401

    import rag_assets.defs.assets  # noqa: F401

    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_materialize_shard, args=(s,)) for s in shards]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    codes = [p.exitcode for p in procs]
    print(json.dumps(codes))
    raise SystemExit(0 if codes == [0] * len(shards) else 1)


def test_sixteen_shard_runs_at_once_all_land(tmp_path, monkeypatch, postgres_db):
    """16 shard runs of the four assets in 16 processes at the same moment (instance and catalog on
    PostgreSQL, tables not yet created): every commit lands, every shard's rows and points are complete,
    none doubled. The processes are forked after the heavy imports (torch, sentence-transformers,
    dagster), so 2 cores do not spend minutes importing; each loads the model and opens its own
    connections itself. (Runs as threads of one process deadlock inside Dagster's logging.)
    """
    import subprocess
    import sys

    env = make_env(tmp_path, monkeypatch, RAG_ICEBERG_URI=catalog_uri(postgres_db))
    config = yaml.safe_load((ROOT / "infra" / "dagster.ecs.yaml").read_text())
    (env.dagster_home / "dagster.yaml").write_text(yaml.safe_dump({k: config[k] for k in ("telemetry", "storage")}))
    shards = [f"s{i:02d}" for i in range(16)]
    for i, shard in enumerate(shards):
        (env.source / shard).mkdir()
        (env.source / shard / "note.md").write_text(f"# Note {i}\n\nShard {shard} keeps {i} lanterns by the harbour wall.\n")
    env.instance().add_dynamic_partitions("shards", shards)

    code = f"from rag_assets_tests.test_postgres import run_shards_at_once; run_shards_at_once({shards!r})"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=420)
    failures = [line for line in out.stderr.splitlines() if "STEP_FAILURE" in line or "Error" in line]
    assert out.returncode == 0, (out.stdout[-1000:], failures[:20])

    lake = env.resources()["iceberg"].lakehouse()
    for spec in ALL_TABLES:
        if spec.name != "quarantine":
            shard_column = lake.table(spec).scan(selected_fields=("shard",)).to_arrow()["shard"].to_pylist()
            assert sorted(shard_column) == shards, spec.name  # one row per shard: none lost, none doubled
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)["shards"]
    assert set(status) == set(shards) and all(row["in_sync"] and row["points"] == 1 for row in status.values())
