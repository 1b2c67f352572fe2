"""The project's jobs: sync one shard, remove a vanished shard, reconcile the index with the tables."""

import datetime as dt

import dagster as dg

from rag_assets.aliases import kept_models
from rag_assets.defs.assets import SHARD_ASSETS
from rag_assets.defs.partitions import shards
from rag_assets.defs.resources import IcebergResource, ModelResource, QdrantResource, RetentionResource, SourceResource
from rag_assets.maintenance import delete_old_runs, latest_state_runs, maintain_table, maintain_vector_store
from rag_assets.reconcile import reconcile_index
from rag_assets.runs import busy_shards
from rag_assets.tables import ALL_TABLES, MAINTAINED_TABLES, VECTOR_STORE

shard_sync_job = dg.define_asset_job(
    "shard_sync_job",
    selection=dg.AssetSelection.assets(*SHARD_ASSETS),
    description="Bring one shard's tables and index up to date with the source.",
    # The four steps run one after another anyway; one process spares three interpreter starts
    # (and three imports of torch) per run.
    executor_def=dg.in_process_executor,
)


# ---------------------------------------------------------------------------------------------------
# Removing a vanished shard is a Dagster run too, so it is recorded, retried and visible in the UI.


class RemoveShardConfig(dg.Config):
    shard: str


def purge_shard(shard: str, iceberg: IcebergResource, qdrant: QdrantResource) -> dict[str, int]:
    """Remove a vanished shard everywhere: its points first, then its rows in every table."""
    with qdrant.index().session() as session:
        deleted = {"points": session.delete_shard(shard)}
    lake = iceberg.lakehouse()
    for spec in ALL_TABLES:
        deleted[spec.name] = lake.delete_partition(spec, shard)
    return deleted


@dg.op(description="Delete a vanished shard's points and its rows in every table, then its partition.")
def remove_shard(context: dg.OpExecutionContext, config: RemoveShardConfig, iceberg: IcebergResource, qdrant: QdrantResource) -> dict:
    deleted = purge_shard(config.shard, iceberg, qdrant)
    if config.shard in context.instance.get_dynamic_partitions(shards.name):
        context.instance.delete_dynamic_partition(shards.name, config.shard)
    context.log.info(f"removed shard {config.shard!r}: {deleted}")
    context.add_output_metadata({f"deleted_{k}": v for k, v in deleted.items()})
    return deleted


@dg.job(description="Remove one vanished shard from the tables, the index and the partitions.")
def remove_shard_job():
    remove_shard()


def remove_run_config(shard: str) -> dict:
    return {"ops": {"remove_shard": {"config": {"shard": shard}}}}


# ---------------------------------------------------------------------------------------------------
# Reconciliation (rag_assets/reconcile.py says what it repairs and why).


@dg.op(description="Compare vector_index with the live collection; restore missing/stale points, delete extra ones.")
def reconcile(context: dg.OpExecutionContext, iceberg: IcebergResource, qdrant: QdrantResource) -> dict:
    # This run itself has no shard, so it never counts itself busy.
    report = reconcile_index(iceberg, qdrant, busy_shards(context.instance), context.log)
    context.add_output_metadata(
        {**report["totals"], "collection": report["collection"], "shards": dg.MetadataValue.json(report["shards"])}
    )
    return report


@dg.job(description="Repair drift between the Iceberg `vector_index` table and the live Qdrant collection.")
def reconcile_job():
    reconcile()


# ---------------------------------------------------------------------------------------------------
# Maintenance (rag_assets/maintenance.py says what grows and what bounds it).


@dg.op(description="Expire old snapshots and delete unreferenced files of every table; delete old finished runs.")
def maintain(context: dg.OpExecutionContext, iceberg: IcebergResource, qdrant: QdrantResource, retention: RetentionResource) -> dict:
    policy, now = retention.policy(), dt.datetime.now(dt.timezone.utc)
    lake = iceberg.lakehouse()
    # First: what it rewrites then expires with the rest. A migration's vectors are kept (aliases.kept_models).
    store = maintain_vector_store(lake, kept_models(qdrant.alias_index()))
    context.log.info(f"vector store: {store}")
    tables = {}
    for spec in MAINTAINED_TABLES:
        tables[spec.name] = maintain_table(lake, spec, policy, now)
        context.log.info(f"maintained {spec.name}: {tables[spec.name]}")
    tables[VECTOR_STORE.name].update(store)
    keep = latest_state_runs(context.instance, [asset.key for asset in SHARD_ASSETS])
    runs = delete_old_runs(context.instance, now - policy.run_retention, keep)
    context.add_output_metadata({
        "expired_snapshots": sum(t["expired_snapshots"] for t in tables.values()),
        "deleted_files": sum(t["deleted"] for t in tables.values()),
        **runs,
        "tables": dg.MetadataValue.json(tables),
    })
    return {"tables": tables, "runs": runs}


@dg.job(description="Keep table history, files and run history bounded (RAG_SNAPSHOT_RETENTION_HOURS, RAG_ORPHAN_AGE_HOURS, RAG_RUN_RETENTION_DAYS).")
def maintenance_job():
    maintain()


# ---------------------------------------------------------------------------------------------------
# Rollback (rag_assets/rollback.py says what goes back and how the sync state is kept consistent).


class RollbackConfig(dg.Config):
    to: str  # ISO 8601 time to go back to; without a zone it is UTC


@dg.op(description="Every shard table back to its snapshot as of a time, the index reconciled to them, the sync state made to agree.")
def rollback(
    context: dg.OpExecutionContext, config: RollbackConfig, iceberg: IcebergResource, qdrant: QdrantResource,
    source: SourceResource, model: ModelResource, retention: RetentionResource,
) -> dict:
    from rag_assets.rollback import parse_time, roll_back

    report = roll_back(context, parse_time(config.to), iceberg, qdrant, source, model, retention)
    context.add_output_metadata({"to": report["to"], **report["index"], "tables": dg.MetadataValue.json(report["tables"])})
    return report


@dg.job(description="Roll the tables, the live collection and the sync state back to a time within the snapshot retention window.")
def rollback_job():
    rollback()


def rollback_run_config(to: str) -> dict:
    return {"ops": {"rollback": {"config": {"to": to}}}}
