"""Faults of timing: two syncs started at the same moment on a fresh home, two writers of one empty
partition. Nothing fails for it, and no row is lost or doubled."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from rag_assets.tables import ALL_TABLES, EMBEDDINGS, CorruptTable, Lakehouse, _catalog
from rag_assets_tests.conftest import make_env
from rag_assets_tests.test_incremental import article, write_docs
from rag_assets_tests.test_tables import vector_rows


def rag_assets(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(Path(sys.executable).with_name("rag-assets")), *args], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("round_", range(3))
def test_two_syncs_started_together_on_a_fresh_home_agree(tmp_path, monkeypatch, round_):
    env = make_env(tmp_path, monkeypatch)
    for shard, topics in (("north", ["glaciers", "orchards"]), ("south", ["railways"]), ("west", ["beekeeping"])):
        write_docs(env.source, shard, {f"{t}.md": article(t, 0) for t in topics})
    first, second = rag_assets("sync", "--json"), rag_assets("sync", "--json")  # no instance, no tables yet
    results = [p.communicate(timeout=600) + (p.returncode,) for p in (first, second)]
    for out, err, code in results:
        assert code == 0, err[-3000:]
    reports = [json.loads(out) for out, _, _ in results]
    statuses = sorted(tuple(sorted({r["status"] for r in rep["shards"].values()})) for rep in reports)
    assert statuses == [("new",), ("unchanged",)]  # one synced, the other waited for it and found nothing to do
    lake = env.resources()["iceberg"].lakehouse()
    for spec in ALL_TABLES:
        rows = lake.table(spec).scan().to_arrow().select(["shard", *spec.key]).to_pylist()
        keys = [tuple(r.values()) for r in rows]
        assert len(keys) == len(set(keys)), f"{spec.name} holds duplicate rows"
    status = subprocess.run([str(Path(sys.executable).with_name("rag-assets")), "status", "--json"],
                            capture_output=True, text=True, timeout=300)
    assert status.returncode == 0, status.stderr[-3000:]  # the instance is healthy afterwards
    assert all(row["in_sync"] for row in json.loads(status.stdout)["shards"].values())


def _open_fresh_catalogs_in_step(folder: Path, rounds: int, ready) -> None:
    for i in range(rounds):
        ready.wait(60)  # every process is ready: they open the same new catalog at the same moment
        _catalog.cache_clear()
        Lakehouse("fresh", _sqlite_catalog(folder / str(i)), "rag").table(EMBEDDINGS)


def _sqlite_catalog(folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    return {"type": "sql", "uri": f"sqlite:///{folder}/catalog.db", "warehouse": f"file://{folder}/wh"}


def test_processes_opening_a_fresh_sqlite_catalog_at_once_all_succeed(tmp_path):
    """Each creates the SQL catalog's own tables on first use; the losers of that race (SQLite: "table
    iceberg_tables already exists") retry and find them (seen with two sync workers on a fresh home)."""
    import multiprocessing as mp

    ctx, rounds = mp.get_context("spawn"), 10
    ready = ctx.Barrier(4)
    procs = [ctx.Process(target=_open_fresh_catalogs_in_step, args=(tmp_path, rounds, ready)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0] * len(procs)
    _catalog.cache_clear()
    for i in range(rounds):
        assert Lakehouse("fresh", _sqlite_catalog(tmp_path / str(i)), "rag").row_counts(EMBEDDINGS) == {}


def test_two_writers_of_one_empty_partition_leave_exactly_one_copy(tmp_path):
    props = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh"}
    Lakehouse("race", props, "rag").replace_partition(EMBEDDINGS, "other", vector_rows("other", 0, 2))  # the table exists
    lakes = []
    for _ in range(2):  # two processes: their own catalog clients
        _catalog.cache_clear()
        lakes.append(Lakehouse("race", props, "rag"))
    barrier, results, errors = threading.Barrier(2), [], []

    def write(lake: Lakehouse, seed: int) -> None:
        try:
            with lake.writer(EMBEDDINGS, "s") as out:
                out.add(vector_rows("s", 0, 5, seed=seed))
                barrier.wait()  # both have read the empty partition; both commit now
                results.append(out.commit())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(lake, seed)) for seed, lake in enumerate(lakes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert lakes[0].row_counts(EMBEDDINGS) == {"other": 2, "s": 5}  # one writer's rows, not both
    assert len(lakes[0].read_partition(EMBEDDINGS, "s")["chunk_id"].unique()) == 5


def test_too_little_disk_space_fails_clearly_and_the_next_sync_recovers(tmp_path, monkeypatch):
    import shutil

    from click.testing import CliRunner

    from rag_assets.cli import main

    env = make_env(tmp_path, monkeypatch)
    write_docs(env.source, "north", {"glaciers.md": article("glaciers", 0)})
    assert CliRunner().invoke(main, ["sync", "--json"]).exit_code == 0
    write_docs(env.source, "north", {"glaciers.md": article("glaciers", 1)})
    # The real check against the real file system: demand more headroom than the disk has free.
    monkeypatch.setenv("RAG_MIN_FREE_MB", str(shutil.disk_usage(tmp_path).free // 2**20 + 1024))
    for command in (["sync", "--json"], ["status"], ["search", "glaciers"]):
        out = CliRunner().invoke(main, command)
        assert out.exit_code == 1 and "disk full: need ~" in out.output and "Traceback" not in out.output, (command, out.output)
    monkeypatch.delenv("RAG_MIN_FREE_MB")  # space is back
    out = CliRunner().invoke(main, ["sync", "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["shards"]["north"]["status"] == "changed"
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).output)["shards"]
    assert status["north"]["in_sync"]


def test_a_truncated_metadata_file_and_a_deleted_data_file_are_named_then_repaired(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from rag_assets.cli import main
    from rag_assets.tables import CHUNKS

    env = make_env(tmp_path, monkeypatch)
    write_docs(env.source, "north", {f"{t}.md": article(t, 0) for t in ("glaciers", "orchards")})
    write_docs(env.source, "south", {"railways.md": article("railways", 0)})
    assert CliRunner().invoke(main, ["sync", "--json"]).exit_code == 0
    lake = env.resources()["iceberg"].lakehouse()
    want = {spec.name: lake.row_counts(spec) for spec in ALL_TABLES}

    # 1. The current metadata.json of `chunks` cut short (a crash of the disk, not of a commit).
    location = lake.table(CHUNKS).metadata_location.removeprefix("file://")
    Path(location).write_bytes(Path(location).read_bytes()[:100])
    _catalog.cache_clear()  # as a new process would: no metadata parsed before the damage
    out = CliRunner().invoke(main, ["status"])
    assert out.exit_code == 1 and "table rag.chunks" in out.output and location in out.output, out.output
    assert "rag-assets repair" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(main, ["repair", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert set(report["restored"]) == {"chunks"} and report["restored"]["chunks"]["from"].endswith(location)
    assert report["resynced_shards"] and set(report["resynced_shards"]) <= {"north", "south"}
    assert report["sync"]["totals"]["failed"] == 0 and report["sync"]["totals"]["embedded"] == 0  # vectors reused
    assert {spec.name: lake.row_counts(spec) for spec in ALL_TABLES} == want

    # 2. A data file of north's embeddings deleted.
    (lost,) = [t.file.file_path for t in lake.table(EMBEDDINGS).scan().plan_files() if t.file.partition[0] == "north"]
    os.remove(lost.removeprefix("file://"))
    with pytest.raises(CorruptTable, match=f"table rag.embeddings: data file {lost} is missing; run `rag-assets repair`"):
        lake.read_partition(EMBEDDINGS, "north")
    out = CliRunner().invoke(main, ["repair", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["missing_files"] == {"embeddings": [lost]} and report["resynced_shards"] == ["north"]
    assert report["sync"]["shards"]["north"]["embedded"] == 0  # from the vector store, not the model
    assert {spec.name: lake.row_counts(spec) for spec in ALL_TABLES} == want
    status = json.loads(CliRunner().invoke(main, ["status", "--json", "--deep"]).output)["shards"]
    assert all(row["in_sync"] for row in status.values())
    assert json.loads(CliRunner().invoke(main, ["repair", "--json"]).output)["resynced_shards"] == []  # nothing left
