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
The workers are forked when the sync starts, before this process opens any catalog or client, so no
connection or thread pool is shared between processes: each worker opens its own once and keeps it for
the shards it runs. The model is not theirs: the sync's model process (model_process.py) runs every
model call, one at a time. Only a single-threaded process that has not imported torch forks
(`model_process.can_fork`): elsewhere, as in a test process that ran other tests, the shards run in this
process. Each worker's chunker gets an equal share of the cores (`embedding.limit_cpu_threads`).

A worker that dies (killed, out of memory) breaks the pool: every shard not finished by then fails (the
other workers are stopped), and the next sync runs them again; their runs, if started, name a dead
worker's pid, so they keep no shard busy.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from rag_assets import embedding, progress
from rag_assets.config import usable_cores
from rag_assets.model_process import can_fork

Run = Callable[..., dict]  # (instance, resources, plan, *args) -> the shard's report row
Lost = Callable[[object, str], dict]  # (plan, why) -> the row of a shard whose worker died

WORKER_DIED = "a sync worker process died (killed, or out of memory); the next sync runs this shard again"

_task: tuple | None = None  # (run, instance, resources), set before the fork: what the workers inherit


def _worker_started(threads: int) -> None:
    progress.silence()  # the parent draws the bars; a worker's steps would draw over them
    embedding.limit_cpu_threads(threads)


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

    def __enter__(self) -> ShardWorkers:
        if self.workers > 1 and can_fork():
            global _task
            _task = (self.run, self.instance, self.resources)
            threads = max(1, usable_cores() // self.workers)
            self.pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("fork"), initializer=_worker_started,
                                            initargs=(threads,))
            self.pool.submit(int).result()  # a fork pool forks all its workers now, at its first task
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

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
