"""The Dagster code location (workspace.yaml points here)."""

from __future__ import annotations

import dagster as dg

from rag_assets.assets import SHARD_ASSETS, shards
from rag_assets.resources import build_resources

shard_sync_job = dg.define_asset_job(
    "shard_sync_job",
    selection=dg.AssetSelection.assets(*SHARD_ASSETS),
    partitions_def=shards,
    description="Bring one shard's tables and index up to date with the source.",
)

defs = dg.Definitions(
    assets=SHARD_ASSETS,
    jobs=[shard_sync_job],
    resources=build_resources(),
)
