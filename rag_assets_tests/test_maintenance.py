"""Long life: table maintenance (snapshots, files, metadata, manifests) on a local and an S3 warehouse, with
another process committing meanwhile, and run-history retention that never loses a shard's latest state."""

import datetime as dt
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import boto3
import dagster as dg
import pyarrow as pa
import pytest
from click.testing import CliRunner

from rag_assets.maintenance import RetentionPolicy, delete_old_runs, latest_state_runs, maintain_table, referenced_files
from rag_assets.tables import EMBEDDINGS, VECTOR_INDEX, VECTOR_STORE, Lakehouse
from rag_assets_tests.conftest import make_env
from rag_assets_tests.test_incremental import article, write_docs

NOW = dt.datetime.now(dt.timezone.utc)  # a fixed stamp for rows; clocks below are read when a test runs


def later(**delta) -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc) + dt.timedelta(**delta)
KEEP_NOTHING_OLD = RetentionPolicy(dt.timedelta(0), dt.timedelta(hours=1), dt.timedelta(days=1))


def rows(shard: str, version: int, n: int = 3) -> pa.Table:
    return pa.table({"shard": [shard] * n, "chunk_id": [f"{shard}-{i}" for i in range(n)], "point_id": [f"p{i}" for i in range(n)],
                     "chunk_hash": [f"h{version}-{i}" for i in range(n)], "collection": ["c"] * n, "synced_at": [NOW] * n})


def commit_history(lake: Lakehouse, commits: int, shards=("a", "b", "c")) -> None:
    for i in range(commits):
        lake.replace_partition(VECTOR_INDEX, shards[i % len(shards)], rows(shards[i % len(shards)], i))


def current_rows(lake: Lakehouse) -> list[dict]:
    return sorted(lake.table(VECTOR_INDEX).scan().to_arrow().to_pylist(), key=lambda r: (r["shard"], r["chunk_id"]))


def local_files(lake: Lakehouse) -> list[Path]:
    return [p for p in Path(lake.table(VECTOR_INDEX).location().removeprefix("file://")).rglob("*") if p.is_file()]


@pytest.fixture
def local_lake(tmp_path) -> Lakehouse:
    return Lakehouse("m", {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh"}, "rag")


def test_metadata_versions_and_manifests_stay_bounded_at_every_commit(local_lake):
    commit_history(local_lake, 60, shards=tuple("abcdefghijklmnopqrst"))  # 20 shards: more manifests than the merge threshold
    table = local_lake.table(VECTOR_INDEX)
    metadata_json = [p for p in local_files(local_lake) if p.name.endswith(".metadata.json")]
    assert len(metadata_json) <= 11  # write.metadata.previous-versions-max = 10, plus the current one
    assert len(table.metadata.metadata_log) <= 10
    assert len(table.current_snapshot().manifests(table.io)) <= 16  # commit.manifest.min-count-to-merge


def test_maintenance_expires_snapshots_and_deletes_only_old_unreferenced_files(local_lake):
    commit_history(local_lake, 30)
    want = current_rows(local_lake)
    before = len(local_files(local_lake))
    assert len(local_lake.table(VECTOR_INDEX).metadata.snapshots) == 57  # one append per new shard (3), delete + append per rewrite (27)

    # Everything is younger than the orphan age: snapshots go, files stay.
    report = maintain_table(local_lake, VECTOR_INDEX, KEEP_NOTHING_OLD, later(minutes=1))
    assert (report["expired_snapshots"], report["snapshots"], report["deleted"]) == (56, 1, 0)
    assert report["kept_young"] > 50 and len(local_files(local_lake)) >= before
    assert current_rows(local_lake) == want

    # Two hours later they are old enough: every file no retained snapshot references is deleted, but
    # only in Iceberg's own data/ and metadata/ folders.
    stranger = Path(local_lake.table(VECTOR_INDEX).location().removeprefix("file://")) / "README.txt"
    stranger.write_text("a person's note")
    report = maintain_table(local_lake, VECTOR_INDEX, KEEP_NOTHING_OLD, later(hours=2))
    assert report["deleted"] == report["orphans_found"] > 50 and report["deleted_data"] == 27  # 30 rewrites of 3 shards
    assert report["deleted_manifest_lists"] > 0 and report["deleted_manifests"] > 0
    table = local_lake.table(VECTOR_INDEX)
    assert stranger.exists()
    on_disk = {f"file://{p}" for p in local_files(local_lake) if p != stranger}
    assert on_disk == referenced_files(table)  # nothing unreferenced left, nothing referenced missing
    assert len([p for p in on_disk if "/data/" in p]) == 3
    assert current_rows(local_lake) == want
    again = maintain_table(local_lake, VECTOR_INDEX, KEEP_NOTHING_OLD, later(hours=2))
    assert again["deleted"] == 0 and again["expired_snapshots"] == 0  # idempotent


def test_snapshots_inside_the_retention_window_stay_readable(local_lake):
    commit_history(local_lake, 6)
    table = local_lake.table(VECTOR_INDEX)
    oldest_kept = table.metadata.snapshots[4]
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=2)  # every file is old enough to go
    window = later - dt.datetime.fromtimestamp(oldest_kept.timestamp_ms / 1000, dt.timezone.utc)
    report = maintain_table(local_lake, VECTOR_INDEX, RetentionPolicy(window, dt.timedelta(hours=1), dt.timedelta(days=1)), later)
    # Snapshot 3 was current at the window's start (a rollback to then restores it): it stays with 4 and later.
    assert report["expired_snapshots"] == 3 and report["snapshots"] == len(table.metadata.snapshots) - 3
    assert report["deleted"] > 0
    table = local_lake.table(VECTOR_INDEX)
    for snapshot in table.metadata.snapshots:  # time travel into the window still finds every file
        table.scan(snapshot_id=snapshot.snapshot_id).to_arrow()


def _keep_committing(props: dict, stop_at: float) -> None:
    lake = Lakehouse("m2", props, "rag")
    i = 0
    while time.time() < stop_at:
        lake.replace_partition(VECTOR_INDEX, "busy", rows("busy", i))
        i += 1


def test_a_commit_by_another_process_during_maintenance_loses_nothing(tmp_path):
    props = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh"}
    lake = Lakehouse("m2", props, "rag")
    commit_history(lake, 30)
    for path in local_files(lake):  # history written three hours ago: old enough to clean up
        old = time.time() - 3 * 3600
        os.utime(path, (old, old))
    writer = mp.get_context("spawn").Process(target=_keep_committing, args=(props, time.time() + 25))
    writer.start()
    policy = RetentionPolicy(dt.timedelta(0), dt.timedelta(hours=1), dt.timedelta(days=1))
    deleted = 0
    while writer.is_alive():
        report = maintain_table(lake, VECTOR_INDEX, policy, dt.datetime.now(dt.timezone.utc))
        deleted += report["deleted"]
    writer.join()
    assert writer.exitcode == 0 and deleted > 50
    table = lake.table(VECTOR_INDEX)
    on_disk = {f"file://{p}" for p in local_files(lake)}
    assert referenced_files(table) <= on_disk  # every file the table refers to is still there
    assert {r["shard"] for r in current_rows(lake)} == {"a", "b", "c", "busy"}


def test_maintenance_on_an_s3_warehouse(moto_server, tmp_path):
    boto3.client("s3").create_bucket(Bucket="lake")
    lake = Lakehouse("ms3", {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": "s3://lake/wh",
                             "s3.endpoint": moto_server, "s3.region": "us-east-1"}, "rag")
    commit_history(lake, 12)
    want = current_rows(lake)

    def objects() -> set[str]:
        pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket="lake", Prefix="wh/")
        return {f"s3://lake/{o['Key']}" for page in pages for o in page.get("Contents", []) if not o["Key"].endswith("/")}  # not folder markers

    young = maintain_table(lake, VECTOR_INDEX, KEEP_NOTHING_OLD, later(minutes=1))
    assert young["expired_snapshots"] == 20 and young["deleted"] == 0 and young["kept_young"] > 0
    report = maintain_table(lake, VECTOR_INDEX, KEEP_NOTHING_OLD, later(hours=2))
    assert report["deleted"] == report["orphans_found"] > 0 and report["deleted_data"] == 9
    assert objects() == referenced_files(lake.table(VECTOR_INDEX))
    assert current_rows(lake) == want


def test_old_runs_go_but_a_shard_keeps_its_sync_state(tmp_path, monkeypatch):
    from rag_assets.cli import main
    from rag_assets.defs.assets import SHARD_ASSETS
    from rag_assets.shard_state import index_settings, plan_sync
    from rag_assets.sync import run_sync

    env = make_env(tmp_path, monkeypatch)
    write_docs(env.source, "north", {"a.md": article("glaciers", 0)})
    write_docs(env.source, "south", {"b.md": article("railways", 0)})
    instance, resources = env.instance(), env.resources()
    assert run_sync(instance, resources).as_json()["totals"]["failed"] == 0
    write_docs(env.source, "north", {"a.md": article("glaciers", 1)})  # north syncs again; south's state is its first run's
    assert run_sync(instance, resources).as_json()["totals"]["failed"] == 0
    runs = {r.run_id for r in instance.get_runs()}
    keep = latest_state_runs(instance, [a.key for a in SHARD_ASSETS])
    assert len(runs) == 3 and len(keep) == 2
    compute_logs = Path(instance.compute_log_manager._base_dir)
    assert all((compute_logs / run_id).exists() for run_id in runs)

    report = delete_old_runs(instance, dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=1), keep)
    assert report == {"deleted_runs": 1, "kept_runs_with_latest_state": 2}
    assert {r.run_id for r in instance.get_runs()} == keep
    (gone,) = runs - keep
    assert not (compute_logs / gone).exists() and instance.all_logs(gone) == []
    plans = plan_sync(instance, resources["source"].open(), index_settings(resources["model"], resources["qdrant"]))
    assert {p.shard: p.status for p in plans} == {"north": "unchanged", "south": "unchanged"}

    # The CLI runs the project's maintenance job (recorded like any run) and reports per table.
    out = CliRunner().invoke(main, ["maintain", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert set(report["tables"]) == {"raw_documents", "chunks", "embeddings", "vector_index", "quarantine", "vector_store"}
    # north's first version lost its chunks: their vectors leave the store, every referenced one stays.
    assert report["tables"]["vector_store"]["dropped_vectors"] > 0
    lake = resources["iceberg"].lakehouse()
    stored = lake.table(VECTOR_STORE).scan().to_arrow().select(["model", "chunk_hash"]).to_pylist()
    referenced = lake.table(EMBEDDINGS).scan().to_arrow().select(["model", "chunk_hash"]).to_pylist()
    assert sorted(map(tuple, (r.values() for r in stored))) == sorted(set(map(tuple, (r.values() for r in referenced))))
    assert report["runs"] == {"deleted_runs": 0, "kept_runs_with_latest_state": 0}  # none is 30 days old
    assert instance.get_runs(dg.RunsFilter(job_name="maintenance_job"))[0].status == dg.DagsterRunStatus.SUCCESS
    again = run_sync(instance, resources).as_json()
    assert {s: r["status"] for s, r in again["shards"].items()} == {"north": "unchanged", "south": "unchanged"}


def test_the_orphan_age_cannot_be_set_below_an_hour_by_any_route():
    from rag_assets.defs.resources import RetentionResource

    with pytest.raises(ValueError, match="below 1:00:00"):
        RetentionResource(orphan_age_hours=0).policy()  # e.g. from a run's config in the launchpad
    with pytest.raises(ValueError, match="below"):
        RetentionPolicy(dt.timedelta(0), dt.timedelta(minutes=59), dt.timedelta(days=1))
    assert RetentionResource().policy().orphan_age == dt.timedelta(hours=72)
