"""shard_workers.ShardWorkers: shard runs in this process, or in forked workers that report back."""

import os
import signal

from rag_assets import embedding, progress
from rag_assets.config import usable_cores
from rag_assets.shard_workers import ShardWorkers


def where(instance, resources, plan, extra):
    """A stand-in shard run: what a worker sees of what the parent had, and where it ran."""
    if plan == "dies":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"plan": plan, "pid": os.getpid(), "instance": instance, "extra": extra,
            "threads": embedding.cpu_threads(), "listeners": len(progress._listeners)}


def lost(plan, why):
    return {"plan": plan, "lost": why}


def test_one_worker_runs_every_shard_here_in_order():
    with ShardWorkers(1, where, lost, "inst", {}) as pool:
        rows = list(pool.map(["a", "b", "c"], "x"))
    assert [plan for plan, _ in rows] == ["a", "b", "c"]
    assert {row["pid"] for _, row in rows} == {os.getpid()}


def test_forked_workers_inherit_the_parents_objects_and_share_the_cores():
    with progress.listening(lambda p: None), ShardWorkers(2, where, lost, "inst", {}) as pool:
        rows = dict(pool.map(list("abcdef"), "x"))
    assert sorted(rows) == list("abcdef")
    assert os.getpid() not in {row["pid"] for row in rows.values()}
    assert all(row["instance"] == "inst" and row["extra"] == "x" for row in rows.values())
    assert {row["threads"] for row in rows.values()} == {max(1, usable_cores() // 2)}
    assert {row["listeners"] for row in rows.values()} == {0}  # only the parent draws progress
    assert embedding.cpu_threads() == usable_cores()  # the parent's own share is untouched


def test_a_dead_worker_fails_the_unfinished_shards_and_nothing_hangs():
    with ShardWorkers(2, where, lost, "inst", {}) as pool:
        rows = dict(pool.map(["dies", "b", "c"], "x"))
    assert sorted(rows) == ["b", "c", "dies"]
    assert "worker process died" in rows["dies"]["lost"]
    assert all("pid" in row or "worker process died" in row["lost"] for row in rows.values())
