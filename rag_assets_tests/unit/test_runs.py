"""The run vocabulary: one rule for which shards are busy, whoever started their runs."""

import os
import subprocess
import sys

import dagster as dg
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.utils import make_new_run_id

from rag_assets.runs import HOST_TAG, PARTITION_TAG, PID_TAG, busy_shards, shard_run_tags, worker_tags


# A queued run must name the code location it came from.
ORIGIN = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("rag_assets"), "__repository__").get_job_origin("shard_sync_job")


def add_run(instance, status, **tags) -> None:
    instance.add_run(DagsterRun(job_name="shard_sync_job", run_id=make_new_run_id(), status=status, tags=tags, remote_job_origin=ORIGIN))


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_busy_shards_counts_queued_and_running_runs_of_any_origin():
    S = dg.DagsterRunStatus
    with dg.DagsterInstance.ephemeral() as instance:
        add_run(instance, S.QUEUED, **{PARTITION_TAG: "backfilled"})  # a UI backfill, still queued
        add_run(instance, S.NOT_STARTED, **shard_run_tags("sensor", "requested", "new"))
        add_run(instance, S.STARTED, **{PARTITION_TAG: "running", **shard_run_tags("cli", "running", "changed")})
        add_run(instance, S.CANCELING, **shard_run_tags("sensor", "removing", "removed"))  # removals have no partition
        add_run(instance, S.SUCCESS, **{PARTITION_TAG: "done"})
        add_run(instance, S.FAILURE, **{PARTITION_TAG: "failed"})
        add_run(instance, S.STARTED)  # reconcile: no shard
        assert busy_shards(instance) == {"backfilled", "requested", "running", "removing"}


def test_a_run_whose_worker_died_on_this_host_does_not_keep_its_shard_busy():
    S = dg.DagsterRunStatus
    with dg.DagsterInstance.ephemeral() as instance:
        add_run(instance, S.STARTED, **{PARTITION_TAG: "killed", **worker_tags(dead_pid())})
        add_run(instance, S.STARTED, **{PARTITION_TAG: "alive", **worker_tags(os.getpid())})
        add_run(instance, S.STARTED, **{PARTITION_TAG: "elsewhere", PID_TAG: str(dead_pid()), HOST_TAG: "another-host"})
        assert busy_shards(instance) == {"alive", "elsewhere"}


def test_shard_run_tags_are_the_same_for_every_origin():
    assert shard_run_tags("sensor", "s", "changed", "source", "fp") == {
        "rag/sync": "sensor", "rag/shard": "s", "rag/status": "changed", "rag/reason": "source", "rag/source_fingerprint": "fp"}
    assert shard_run_tags("cli", "s", "removed") == {"rag/sync": "cli", "rag/shard": "s", "rag/status": "removed"}
