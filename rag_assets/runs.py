"""The run vocabulary: every `rag/*` tag the project puts on runs and steps, and which shards are busy.

One rule for "busy", used by the sensor, the reconcile job and `rag-assets sync` alike: a shard is busy
while any run for it (sensor, CLI or a backfill from the UI) is queued, starting or running. Queued runs
count because the run queue may hold a run for longer than a sensor tick. A run whose worker process is
known to be gone (its `rag/pid` on this host names no live process: a CLI sync killed mid-run, which
no daemon's run monitoring will ever mark failed) does not keep its shard busy forever. A run of a job
that rewrites every shard's tables (`EXCLUSIVE_JOBS`: a rollback) keeps every shard busy while it runs,
so that no sensor run, sync or migration step interleaves with it.
"""

from __future__ import annotations

import os
import socket

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES, DagsterRun

from rag_assets.defs.partitions import shards

SYNC_TAG = "rag/sync"  # who started a sync run: "sensor" or "cli"
SHARD_TAG = "rag/shard"  # the shard a run syncs or removes (a removal run has no partition)
STATUS_TAG = "rag/status"  # why the run was requested: new | changed | removed
REASON_TAG = "rag/reason"  # why a shard is "changed": source | settings
FINGERPRINT_TAG = "rag/source_fingerprint"  # the listing fingerprint the run was requested for
GPU_TAG = "rag/gpu"  # op tag of steps that embed (also accepted as a run tag): route the run to a GPU
ROUTE_TAG = "rag/launcher"  # which backend the GPU routing launcher sent a run to: gpu | default
DEVICE_TAG = "rag/gpu_device"  # the GPU a local run was pinned to ("" = none: CPU fallback)
PID_TAG = "rag/pid"  # the process that executes the run (a local run worker, or the CLI itself)
HOST_TAG = "rag/host"  # the host that process runs on
ALLOW_DELETES_TAG = "rag/allow_deletes"  # "true": the deletion guard lets this run delete (deletion_guard.py)
PARTITION_TAG = "dagster/partition"  # Dagster's own: the shard of a partitioned run
EXCLUSIVE_JOBS = frozenset({"rollback_job"})  # while one runs, every shard is busy


def shard_run_tags(origin: str, shard: str, status: str, reason: str = "", fingerprint: str = "") -> dict[str, str]:
    """The tags of a run that syncs or removes one shard, the same whoever requests it."""
    tags = {SYNC_TAG: origin, SHARD_TAG: shard, STATUS_TAG: status}
    if reason:
        tags[REASON_TAG] = reason
    if fingerprint:
        tags[FINGERPRINT_TAG] = fingerprint
    return tags


def worker_tags(pid: int | None = None) -> dict[str, str]:
    """Tags naming the process that executes a run, so that `busy_shards` can tell a dead one."""
    return {PID_TAG: str(pid or os.getpid()), HOST_TAG: socket.gethostname()}


def worker_is_gone(run: DagsterRun) -> bool:
    """True when the run names its worker process on this host and that process no longer exists."""
    pid, host = run.tags.get(PID_TAG), run.tags.get(HOST_TAG)
    if not pid or host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def run_shard(run: DagsterRun) -> str | None:
    return run.tags.get(PARTITION_TAG) or run.tags.get(SHARD_TAG)


def busy_shards(instance: dg.DagsterInstance, except_run: str | None = None) -> set[str]:
    """Shards with a run queued, starting or running, whoever started it (see the module's docstring);
    `except_run`: a run that does not count (the asking run itself)."""
    runs = [r for r in instance.get_runs(dg.RunsFilter(statuses=list(NOT_FINISHED_STATUSES)))
            if r.run_id != except_run and not worker_is_gone(r)]
    if any(run.job_name in EXCLUSIVE_JOBS for run in runs):
        return set(instance.get_dynamic_partitions(shards.name))
    return {shard for run in runs if (shard := run_shard(run))}
