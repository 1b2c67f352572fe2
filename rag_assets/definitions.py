"""The Dagster code location (workspace.yaml points here)."""

import warnings

import dagster as dg

from rag_assets.assets import SHARD_ASSETS
from rag_assets.jobs import remove_shard_job, shard_sync_job
from rag_assets.reconcile import reconcile_job, reconcile_schedule
from rag_assets.resources import build_resources
from rag_assets.sensors import source_change_sensor

# Dagster 1.13 passes `owners=None` to SensorDefinition itself and then warns that the parameter is
# beta; the warning is about Dagster's own call, not this project, so it is silenced here only.
warnings.filterwarnings("ignore", message="Parameter `owners`", category=dg.BetaWarning)

defs = dg.Definitions(
    assets=SHARD_ASSETS,
    jobs=[shard_sync_job, remove_shard_job, reconcile_job],
    sensors=[source_change_sensor],
    schedules=[reconcile_schedule],
    resources=build_resources(),
)
