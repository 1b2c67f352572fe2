"""The pooled SQLite storage of the shipped dagster.yaml: Dagster's own files and records, kept connections,
a bound on them, and safe across threads and fork (sync workers fork from the CLI)."""

from __future__ import annotations

import multiprocessing
import threading
from pathlib import Path

import dagster as dg
import pytest
import yaml

from rag_assets.dagster_storage import MAX_OPEN_DATABASES, PooledSqliteEventLogStorage, PooledSqliteRunStorage

ROOT = Path(__file__).parents[1]


@dg.asset
def tiny() -> int:
    return 1


def _instance(home: Path, pooled: bool) -> dg.DagsterInstance:
    config = {"telemetry": {"enabled": False}}
    if pooled:
        config["storage"] = yaml.safe_load((ROOT / "dagster.yaml").read_text())["storage"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return dg.DagsterInstance.from_config(str(home))


def _materialize(instance: dg.DagsterInstance) -> str:
    result = dg.materialize([tiny], instance=instance)
    assert result.success
    return result.run_id


def _pooled_parts(instance: dg.DagsterInstance) -> tuple:
    runs, events = instance.run_storage, instance.event_log_storage
    assert isinstance(runs, PooledSqliteRunStorage) and isinstance(events, PooledSqliteEventLogStorage), (runs, events)
    return runs, events


def test_shipped_config_uses_pooled_storage_on_dagsters_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    pooled = _instance(tmp_path, pooled=True)
    _pooled_parts(pooled)
    run_ids = [_materialize(pooled) for _ in range(3)]
    # Dagster's own layout: history/runs.db, and history/runs/ with index.db and one file per run.
    assert (tmp_path / "history" / "runs.db").exists() and (tmp_path / "history" / "runs" / "index.db").exists()
    assert all((tmp_path / "history" / "runs" / f"{run_id}.db").exists() for run_id in run_ids)

    # Dagster's stock SQLite storage reads the same home: the same runs, events and materializations.
    stock = _instance(tmp_path, pooled=False)
    assert {r.run_id for r in stock.get_runs()} == set(run_ids)
    for run_id in run_ids:
        assert stock.get_run_by_id(run_id).is_success
        assert len(stock.all_logs(run_id)) == len(pooled.all_logs(run_id)) > 5
    assert stock.get_latest_materialization_event(dg.AssetKey("tiny")).run_id == run_ids[-1]
    # And back: runs written by the stock storage are read by the pooled one.
    stock_run = _materialize(stock)
    pooled = _instance(tmp_path, pooled=True)
    assert pooled.get_latest_materialization_event(dg.AssetKey("tiny")).run_id == stock_run
    assert len(pooled.get_runs()) == 4


def test_open_databases_are_bounded_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = _instance(tmp_path, pooled=True)
    runs, events = _pooled_parts(instance)
    for _ in range(MAX_OPEN_DATABASES + 3):  # each run is its own SQLite file, plus the index shard
        _materialize(instance)
    assert len(events._pooled._engines) == MAX_OPEN_DATABASES
    assert len(runs._pooled._engines) == 1
    engine = runs._pooled.get(runs._conn_string)
    instance.get_runs()
    assert runs._pooled.get(runs._conn_string) is engine  # kept, not rebuilt per statement
    assert engine.pool.checkedout() == 0  # nothing held between statements


def test_threads_share_one_storage(tmp_path, monkeypatch):
    """The webserver and the daemon use one instance from many threads. (Threads run storage calls here,
    not whole runs: Dagster's in-process execution is not thread-safe on its own, see shard_workers.py.)"""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = _instance(tmp_path, pooled=True)
    run_id = _materialize(instance)
    errors = []

    def work(n: int):
        try:
            for i in range(20):
                instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=f"thread_{n}", metadata={"i": i}))
                assert instance.get_run_by_id(run_id).is_success
                assert len(instance.all_logs(run_id)) > 5
        except Exception as exc:  # noqa: BLE001 - reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    for n in range(4):
        event = instance.get_latest_materialization_event(dg.AssetKey(f"thread_{n}"))
        assert event.asset_materialization.metadata["i"].value == 19
    assert instance.event_log_storage.get_asset_records([dg.AssetKey(f"thread_{n}") for n in range(4)])


def _child_materializes(instance, queue) -> None:
    queue.put(_materialize(instance))


@pytest.mark.skipif(multiprocessing.get_start_method(allow_none=True) not in (None, "fork"), reason="fork start method")
def test_forked_child_opens_its_own_connections(tmp_path, monkeypatch):
    """A sync worker forks from a process whose storage holds open connections: the child must open its
    own (SQLite forbids using a parent's connection), and the parent's stay usable."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = _instance(tmp_path, pooled=True)
    parent_run = _materialize(instance)
    runs, events = _pooled_parts(instance)
    parent_engines = dict(events._pooled._engines)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    children = [ctx.Process(target=_child_materializes, args=(instance, queue)) for _ in range(2)]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    child_runs = {queue.get(timeout=5) for _ in children}
    assert events._pooled._engines == parent_engines  # the parent's pools are untouched
    after = _materialize(instance)  # and still work
    assert {r.run_id for r in instance.get_runs()} == {parent_run, after, *child_runs}
    assert all(instance.get_run_by_id(r).is_success for r in child_runs)
    assert instance.get_latest_materialization_event(dg.AssetKey("tiny")).run_id == after


def test_wipe_closes_connections_before_deleting_files(tmp_path, monkeypatch):
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = _instance(tmp_path, pooled=True)
    _materialize(instance)
    _, events = _pooled_parts(instance)
    events.wipe()
    # Only the index shard, which wipe empties and keeps, is open again: no run's file is.
    assert [Path(url).name for url in events._pooled._engines] == ["index.db"]
    run_id = _materialize(instance)  # a fresh run after the wipe is written to a fresh file
    assert len(instance.all_logs(run_id)) > 5
