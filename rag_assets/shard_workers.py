"""The shard runs of one `rag-assets sync`: one after another in this process, or several at once in
worker processes forked from it (RAG_SYNC_WORKERS).

Why processes: a shard run is mostly Python (Dagster's step machinery and events, Iceberg commits, the
chunker's and the model's calls), so threads would share one core; and Dagster's in-process execution
is not thread-safe (each run's log manager re-runs `logging.config.dictConfig`, which deadlocked two
runs in threads). Each worker executes whole Dagster runs, exactly as the CLI does, and records them in
the same instance, as the daemon's run workers do.

Why fork, and why first: a forked worker starts with the CLI's modules already imported (a fresh
interpreter pays ~2 s for dagster, polars and the rest before its first shard); the assets, jobs and
pyiceberg, which a sync with nothing to run never needs, each worker imports on its first shard (sync.py).
The workers are forked when the
sync starts, before this process opens any catalog, client or model, so no connection, thread pool or
model is shared between processes: each worker opens its own once and keeps it for the shards it runs.
Only a single-threaded process forks (a thread holding a lock at the fork would leave it held forever in
the child; gRPC and fsspec's event loops run threads): with other threads alive, as in a test process
that ran other tests, the shards run in this process. Each worker's model and chunker get an equal share
of the cores (`embedding.limit_cpu_threads`).

A worker that dies (killed, out of memory) breaks the pool: every shard not finished by then fails (the
other workers are stopped), and the next sync runs them again; their runs, if started, name a dead
worker's pid, so they keep no shard busy. The workers take turns on the model through a file lock, which
a killed worker's kernel releases.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from rag_assets import embedding, progress
from rag_assets.config import usable_cores

Run = Callable[..., dict]  # (instance, resources, plan, *args) -> the shard's report row
Lost = Callable[[object, str], dict]  # (plan, why) -> the row of a shard whose worker died

WORKER_DIED = "a sync worker process died (killed, or out of memory); the next sync runs this shard again"

_task: tuple | None = None  # (run, instance, resources), set before the fork: what the workers inherit
FOLDER_PREFIX = "rag-sync-"  # + the parent's pid + "-": the temp folder of a sync's worker lock


def remove_folders_of_dead_syncs(temp: Path | None = None) -> list[Path]:
    """A sync killed with SIGKILL leaves its lock folder behind (no cleanup runs): each sync with workers
    removes those of syncs whose process is gone, so they never pile up. Returns what it removed. (A pid
    is judged in this process's pid namespace: a temp dir shared by containers would need its own TMPDIR.)"""
    removed = []
    for folder in Path(temp or tempfile.gettempdir()).glob(f"{FOLDER_PREFIX}*-*"):
        pid = folder.name[len(FOLDER_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _worker_started(threads: int, model_lock: str) -> None:
    progress.silence()  # the parent draws the bars; a worker's steps would draw over them
    embedding.limit_cpu_threads(threads)
    embedding.take_turns_on_model(model_lock)


def _in_worker(plan, *args) -> dict:
    run, instance, resources = _task
    return run(instance, resources, plan, *args)


class ShardWorkers:
    """`with ShardWorkers(n, run, lost, instance, resources) as pool: pool.map(plans, *args)` yields
    (plan, row) as each shard finishes: in n forked workers, or in this process when n is 1 (or the
    workers could not be forked); `pool.here(plans, *args)` runs them in this process."""

    def __init__(self, workers: int, run: Run, lost: Lost, instance, resources):
        self.workers, self.run, self.lost = workers, run, lost
        self.instance, self.resources = instance, resources
        self.pool: ProcessPoolExecutor | None = None
        self.folder: tempfile.TemporaryDirectory | None = None  # holds the model's turn lock while workers run

    def __enter__(self) -> ShardWorkers:
        if self.workers > 1 and "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
            global _task
            _task = (self.run, self.instance, self.resources)
            threads = max(1, usable_cores() // self.workers)
            remove_folders_of_dead_syncs()
            self.folder = tempfile.TemporaryDirectory(prefix=f"{FOLDER_PREFIX}{os.getpid()}-")
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_started,
                                            initargs=(threads, os.path.join(self.folder.name, "model.lock")))
            self.pool.submit(int).result()  # a fork pool forks all its workers now, at its first task
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.folder is not None:
            self.folder.cleanup()

    def here(self, plans: Sequence, *args) -> Iterator[tuple[object, dict]]:
        """(plan, row) of each plan, run one after another in this process."""
        for plan in plans:
            yield plan, self.run(self.instance, self.resources, plan, *args)

    def map(self, plans: Sequence, *args) -> Iterator[tuple[object, dict]]:
        """(plan, row) of each plan as it finishes, in the workers (here when there are none, or one plan)."""
        if self.pool is None or len(plans) < 2:
            yield from self.here(plans, *args)
            return
        pending = {}
        for plan in plans:
            try:
                pending[self.pool.submit(_in_worker, plan, *args)] = plan
            except BrokenProcessPool:  # a worker died while the others were being handed their shards
                yield plan, self.lost(plan, WORKER_DIED)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                plan = pending.pop(future)
                try:
                    yield plan, future.result()
                except BrokenProcessPool:
                    yield plan, self.lost(plan, WORKER_DIED)
