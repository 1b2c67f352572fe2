"""shard_workers.ShardWorkers: shard runs in this process, or in forked workers that report back.

Workers are forked only from a single-threaded process, and a test process may have threads left by
earlier tests: the cases that need workers run in a fresh interpreter (`in_fresh_process`)."""

import json
import os
import signal
import subprocess
import sys
import threading

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


def forked_rows(plans: list[str]) -> dict:
    """Run in a fresh interpreter: the rows of `plans` from 2 workers, with a progress listener in the parent."""
    with progress.listening(lambda p: None), ShardWorkers(2, where, lost, "inst", {}) as pool:
        rows = dict(pool.map(plans, "x"))
    return {"parent": os.getpid(), "parent_threads": embedding.cpu_threads(), "rows": rows}


def in_fresh_process(plans: list[str]) -> dict:
    code = f"import json; from {__name__} import forked_rows; print(json.dumps(forked_rows({plans!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


def test_one_worker_runs_every_shard_here_in_order():
    with ShardWorkers(1, where, lost, "inst", {}) as pool:
        rows = list(pool.map(["a", "b", "c"], "x"))
    assert [plan for plan, _ in rows] == ["a", "b", "c"]
    assert {row["pid"] for _, row in rows} == {os.getpid()}


def test_forked_workers_inherit_the_parents_objects_and_share_the_cores():
    got = in_fresh_process(list("abcdef"))
    rows = got["rows"]
    assert sorted(rows) == list("abcdef")
    assert got["parent"] not in {row["pid"] for row in rows.values()}
    assert all(row["instance"] == "inst" and row["extra"] == "x" for row in rows.values())
    assert {row["threads"] for row in rows.values()} == {max(1, usable_cores() // 2)}
    assert {row["listeners"] for row in rows.values()} == {0}  # only the parent draws progress
    assert got["parent_threads"] == usable_cores()  # the parent's own share is untouched


def test_a_dead_worker_fails_the_unfinished_shards_and_nothing_hangs():
    rows = in_fresh_process(["dies", "b", "c"])["rows"]
    assert sorted(rows) == ["b", "c", "dies"]
    assert "worker process died" in rows["dies"]["lost"]
    assert all("pid" in row or "worker process died" in row["lost"] for row in rows.values())


def test_a_process_with_other_threads_runs_the_shards_itself():
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with ShardWorkers(2, where, lost, "inst", {}) as pool:
            rows = dict(pool.map(["a", "b"], "x"))
    finally:
        stop.set()
        other.join()
    assert {row["pid"] for row in rows.values()} == {os.getpid()}
