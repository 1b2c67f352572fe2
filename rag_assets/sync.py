"""`rag-assets sync`: what the sensor does, once, in-process: the same plan (`shard_state.plan_sync`), the
same busy rule, the same jobs and the same run tags (`runs`), recorded in the Dagster instance as runs of
the project's code location (`project_runs`).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from rag_assets.defs.partitions import add_shards, shards
from rag_assets.deletion_guard import held_shards, is_held_failure
from rag_assets.runs import ALLOW_DELETES_TAG, busy_shards, shard_run_tags, worker_tags
from rag_assets.model_process import load_now, model_process
from rag_assets.shard_workers import ShardWorkers
from rag_assets.shard_state import (
    CHUNKS_KEY, EMBEDDINGS_KEY, RAW_DOCUMENTS_KEY, VECTOR_INDEX_KEY, ShardPlan, check_live, index_settings, latest_metadata,
    plan_sync,
)

# The assets, jobs and Iceberg tables are imported by `_run_shard`, not here: a sync with nothing to run
# (most syncs) never pays for them (~0.45 s of a ~3 s process), and forked workers import them on their
# first shard, both at once.
COUNT_SOURCES = {  # report field -> (asset key, metadata key)
    "documents": (RAW_DOCUMENTS_KEY, "documents"),
    "quarantined": (RAW_DOCUMENTS_KEY, "quarantined"),
    "chunks": (CHUNKS_KEY, "chunks"),
    "embedded": (EMBEDDINGS_KEY, "embedded"),
    "reused": (EMBEDDINGS_KEY, "reused"),
    "upserted": (VECTOR_INDEX_KEY, "upserted"),
    "deleted": (VECTOR_INDEX_KEY, "deleted"),
}
COUNT_FIELDS = (*COUNT_SOURCES, "seconds")
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # run logs stay in the instance


@dataclass
class SyncReport:
    shards: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # top-level source names that are not shards, and why

    def as_json(self) -> dict:
        totals = {k: 0 for k in COUNT_FIELDS}
        for row in self.shards.values():
            for k in COUNT_FIELDS:
                totals[k] += row.get(k, 0)
        totals["seconds"] = round(totals["seconds"], 3)
        totals["failed"] = sum(1 for r in self.shards.values() if r["status"] == "failed")
        totals["held"] = sum(1 for r in self.shards.values() if r["status"] == "held")
        return {"shards": self.shards, "totals": totals, "skipped_shards": self.skipped}


class SyncProgress:
    """What `run_sync` tells as it goes (the CLI draws it; this default draws nothing). Inside a shard's run
    the steps report through `rag_assets.progress`."""

    def planned(self, to_run: list[ShardPlan]) -> None:
        """The shards that will run (new, changed and removed ones that are not busy), before any runs."""

    def finished(self, plan: ShardPlan, row: dict) -> None:
        """A shard that ran (synced or removed) is done: its report row, in the order the runs finish."""


def run_sync(
    instance: dg.DagsterInstance, resources: Mapping[str, object], progress: SyncProgress | None = None,
    allow_deletes: bool = False,  # let the deletion guard's holds through (`sync --allow-deletes`)
    workers: int = 1,  # shard runs at once (RAG_SYNC_WORKERS); above 1 in forked worker processes (shard_workers.py)
) -> SyncReport:
    # Forked first, while this process holds no catalog, client or model: each worker opens its own catalog
    # and clients; the model process (the CLI's, if it started one) loads the model once the plan needs it.
    with model_process(resources["model"].embedder_options()), ShardWorkers(workers, _run_shard, _lost, instance, resources) as pool:
        resources["qdrant"].check_space()  # a full disk fails the sync once, clearly, before any shard runs
        source = resources["source"].open()
        check_live(resources["model"], resources["qdrant"])
        plans = plan_sync(instance, source, index_settings(resources["model"], resources["qdrant"]))
        known = set(instance.get_dynamic_partitions(shards.name))
        add_shards(instance, [p.shard for p in plans if p.status == "new" and p.shard not in known])
        busy = busy_shards(instance)  # left to the run already queued or running for them (another sync, the daemon)
        held = held_shards(instance, plans, len(known), resources["source"].max_delete_fraction, allow_deletes)
        idle = {p.shard for p in plans if p.status == "unchanged" or p.shard in held}  # nothing runs for them
        last = {key: latest_metadata(instance, key, idle) for key in (RAW_DOCUMENTS_KEY, CHUNKS_KEY)} if idle else {}
        report = SyncReport(skipped=dict(source.skipped))
        progress = progress or SyncProgress()
        to_run = [p for p in plans if p.shard not in idle and p.shard not in busy]
        if any(p.status in ("new", "changed") for p in to_run):  # a sync with nothing to embed never loads the model
            load_now(resources["model"].embedder_options())
        progress.planned(to_run)
        for plan in plans:
            if plan.shard in busy and plan.status != "unchanged":
                report.shards[plan.shard] = _row(plan, status="busy", reason="a run for this shard is queued or in progress")
            elif plan.shard in idle:  # the counts of its last sync
                row = _row(plan, **{name: last[asset_key].get(plan.shard, {}).get(key, 0)
                                    for name, (asset_key, key) in COUNT_SOURCES.items() if name in ("documents", "chunks", "quarantined")})
                if plan.shard in held:
                    row.update(status="held", reason=held[plan.shard])
                report.shards[plan.shard] = row
        # Edits (and removals) go to the workers. Whole shards to build run here, one at a time: their model
        # calls would take turns anyway, and two workers building whole shards on 2 vCPUs were slower than
        # this process alone (benchmarks/RESULTS.md, "Side by side").
        edits = [p for p in to_run if not p.whole_shard]
        builds = [p for p in to_run if p.whole_shard]
        for plan, row in itertools.chain(pool.map(edits, allow_deletes), pool.here(builds, allow_deletes)):
            report.shards[plan.shard] = row
            progress.finished(plan, row)
    report.shards = {plan.shard: report.shards[plan.shard] for plan in plans}  # in the plan's order
    return report


def _row(plan: ShardPlan, **fields) -> dict:
    return {"status": plan.status, **{k: 0 for k in COUNT_FIELDS}, **fields}


def _lost(plan: ShardPlan, why: str) -> dict:
    return _row(plan, status="failed", error=why)


def _run_shard(instance: dg.DagsterInstance, resources: Mapping[str, object], plan: ShardPlan, allow_deletes: bool) -> dict:
    """Sync (new, changed) or remove (removed) one shard in a Dagster run of this process; its report row."""
    from rag_assets.defs.jobs import remove_run_config, remove_shard_job, shard_sync_job
    from rag_assets.project_runs import execute_project_job

    started = time.perf_counter()
    row = _row(plan)
    tags = {**shard_run_tags("cli", plan.shard, plan.status, plan.reason, plan.fingerprint), **worker_tags()}
    if allow_deletes:
        tags[ALLOW_DELETES_TAG] = "true"
    if plan.status in ("new", "changed"):
        result = execute_project_job(
            shard_sync_job.name, instance, resources, partition_key=plan.shard, tags=tags, run_config=QUIET,
        )
        for event in result.get_asset_materialization_events():
            meta = event.materialization.metadata
            for name, (asset_key, key) in COUNT_SOURCES.items():
                if event.asset_key == asset_key and key in meta:
                    row[name] = meta[key].value
        if not result.success:
            row.update(_failure(result))
    else:
        result = execute_project_job(
            remove_shard_job.name, instance, resources, tags=tags, run_config={**QUIET, **remove_run_config(plan.shard)},
        )
        if result.success:
            row["deleted"] = result.output_for_node("remove_shard")["points"]
        else:
            row.update(_failure(result))
    row["seconds"] = round(time.perf_counter() - started, 3)
    return row


def _failure(result) -> dict[str, str]:
    """The report fields of a failed run: "held" with the deletion guard's reason, or "failed" with the
    innermost cause of its first step failure as "Type: message" (Dagster wraps a step's exception in its
    own "Error occurred while executing op ..." error; the cause is what went wrong)."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data:
            if is_held_failure(event.step_failure_data):
                return {"status": "held", "reason": event.step_failure_data.user_failure_data.description}
            if event.step_failure_data.error:
                return {"status": "failed", "error": root_cause(event.step_failure_data.error)}
    return {"status": "failed", "error": "run failed"}


def root_cause(error) -> str:
    """First line of the innermost cause of a Dagster SerializableErrorInfo (its message carries the type)."""
    while error.cause is not None:
        error = error.cause
    lines = error.message.strip().splitlines()
    return lines[0] if lines else error.cls_name or "error"
