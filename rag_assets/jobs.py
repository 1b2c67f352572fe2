"""Jobs over the shard assets."""

import dagster as dg

from rag_assets.assets import SHARD_ASSETS, purge_shard, shards
from rag_assets.resources import IcebergResource, QdrantResource

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


