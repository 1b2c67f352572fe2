"""What changed in the source, and bringing it in: one code path for the sensor and `rag-assets sync`.

The state that decides "changed" is Dagster's own: the `source_fingerprint` recorded by the newest
`vector_index` materialization of each shard, i.e. the last fingerprint that made it all the way
into the index. A run that failed half-way leaves the old fingerprint, so the shard is picked up
again on the next tick or sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import dagster as dg
from dagster._core.events import DagsterEventType

from rag_assets.assets import SHARD_ASSETS, chunks, embeddings, index_settings, raw_documents, shards, vector_index
from rag_assets.jobs import remove_run_config, remove_shard_job
from rag_assets.source import Source

SYNC_TAG = "rag/sync"  # on every run that sync or the sensor starts


@dataclass
class ShardPlan:
    shard: str
    status: str  # new | changed | unchanged | removed
    fingerprint: str = ""
    reason: str = ""  # why a shard is "changed": source | settings


class SettingsConflict(RuntimeError):
    """The configured model differs from the one a collection was built with, and the collection did not change."""


def latest_metadata(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: set[str] | None = None
) -> dict[str, Mapping[str, object]]:
    """partition -> metadata of that partition's newest materialization, in two queries for all shards."""
    ids = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions
    )
    if not ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(ids.values())), limit=len(ids)
    ).records
    return {
        r.partition_key: {**{k: v.value for k, v in r.asset_materialization.metadata.items()}, "_timestamp": r.timestamp}
        for r in records
        if r.partition_key
    }


def plan_sync(instance: dg.DagsterInstance, source: Source, settings: Mapping[str, str]) -> list[ShardPlan]:
    """One plan per shard: new, changed (source fingerprint or index settings differ), unchanged, removed.

    `settings` is `assets.index_settings(...)` of the configured resources. A model switch is a full
    re-embed and must go into another collection: a changed model with an unchanged collection raises
    SettingsConflict before anything runs, so two models' vectors never meet in one collection.
    """
    listings = source.list_shards()
    known = set(instance.get_dynamic_partitions(shards.name))
    synced = latest_metadata(instance, vector_index.key)
    for shard, meta in synced.items():
        if shard in known and meta.get("index_collection") == settings["index_collection"] and meta.get("index_model") not in (None, settings["index_model"]):
            raise SettingsConflict(
                f"shard {shard!r} is indexed in collection {settings['index_collection']!r} with model "
                f"{meta['index_model']}, but the configured model is {settings['index_model']}. Changing the "
                "model is a full re-embed into a new collection: set RAG_QDRANT_COLLECTION to a new name."
            )
    plans = []
    for shard, listing in listings.items():
        fp, meta = listing.fingerprint, synced.get(shard)
        if shard not in known or meta is None:
            plans.append(ShardPlan(shard, "new", fp))
        elif meta.get("source_fingerprint") != fp:
            plans.append(ShardPlan(shard, "changed", fp, "source"))
        elif any(meta.get(k) != v for k, v in settings.items()):
            plans.append(ShardPlan(shard, "changed", fp, "settings"))
        else:
            plans.append(ShardPlan(shard, "unchanged", fp))
    plans.extend(ShardPlan(s, "removed") for s in sorted(known - set(listings)))
    return plans


# ---------------------------------------------------------------------------------------------------
# In-process sync (the CLI): the same plan, executed here instead of by the daemon's run launcher.

COUNT_SOURCES = {  # report field -> (asset, metadata key)
    "documents": (raw_documents, "documents"),
    "quarantined": (raw_documents, "quarantined"),
    "chunks": (chunks, "chunks"),
    "embedded": (embeddings, "embedded"),
    "reused": (embeddings, "reused"),
    "upserted": (vector_index, "upserted"),
    "deleted": (vector_index, "deleted"),
}
COUNT_FIELDS = (*COUNT_SOURCES, "seconds")
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}  # run logs stay in the instance


@dataclass
class SyncReport:
    shards: dict[str, dict] = field(default_factory=dict)

    def as_json(self) -> dict:
        totals = {k: 0 for k in COUNT_FIELDS}
        for row in self.shards.values():
            for k in COUNT_FIELDS:
                totals[k] += row.get(k, 0)
        totals["seconds"] = round(totals["seconds"], 3)
        totals["failed"] = sum(1 for r in self.shards.values() if r["status"] == "failed")
        return {"shards": self.shards, "totals": totals}


def run_sync(
    instance: dg.DagsterInstance,
    resources: Mapping[str, object],
    progress: Callable[[ShardPlan], None] = lambda plan: None,  # called as each shard finishes
) -> SyncReport:
    source = resources["source"].open()
    plans = plan_sync(instance, source, index_settings(resources["model"], resources["qdrant"]))
    new = [p.shard for p in plans if p.status == "new"]
    instance.add_dynamic_partitions(shards.name, [s for s in new if not instance.has_dynamic_partition(shards.name, s)])
    report = SyncReport()
    for plan in plans:
        started = time.perf_counter()
        row: dict = {"status": plan.status, **{k: 0 for k in COUNT_FIELDS}}
        if plan.status in ("new", "changed"):
            result = dg.materialize(
                SHARD_ASSETS, partition_key=plan.shard, instance=instance, resources=resources,
                tags={SYNC_TAG: "cli"}, raise_on_error=False, run_config=QUIET,
            )
            for event in result.get_asset_materialization_events():
                meta = event.materialization.metadata
                for name, (asset, key) in COUNT_SOURCES.items():
                    if event.asset_key == asset.key and key in meta:
                        row[name] = meta[key].value
            if not result.success:
                row.update(status="failed", error=_first_error(result))
        elif plan.status == "unchanged":
            for name, (asset, key) in COUNT_SOURCES.items():
                if name in ("documents", "chunks", "quarantined"):
                    row[name] = latest_metadata(instance, asset.key, {plan.shard}).get(plan.shard, {}).get(key, 0)
        else:
            result = remove_shard_job.execute_in_process(
                instance=instance,
                resources={"iceberg": resources["iceberg"], "qdrant": resources["qdrant"]},
                tags={SYNC_TAG: "cli"}, raise_on_error=False, run_config={**QUIET, **remove_run_config(plan.shard)},
            )
            if result.success:
                row["deleted"] = result.output_for_node("remove_shard")["points"]
            else:
                row.update(status="failed", error=_first_error(result))
        row["seconds"] = round(time.perf_counter() - started, 3)
        report.shards[plan.shard] = row
        progress(plan)  # after the shard is done, so a progress bar counts finished shards
    return report


def _first_error(result) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            return event.step_failure_data.error.message.strip().splitlines()[0]
    return "run failed"
