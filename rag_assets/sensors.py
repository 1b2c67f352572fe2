"""The sensor that keeps the index in step with the source, using `sync.plan_sync`."""

import dagster as dg
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES

from rag_assets.assets import index_settings, shards
from rag_assets.config import Settings
from rag_assets.jobs import remove_run_config, remove_shard_job, shard_sync_job
from rag_assets.launcher import ensure_gpu_pool
from rag_assets.resources import ModelResource, QdrantResource, SourceResource
from rag_assets.sync import SYNC_TAG, SettingsConflict, plan_sync

SHARD_TAG = "rag/shard"
# A shard with a sensor run in any of these states is not requested again. Queued runs count: the
# run queue may hold a run longer than one tick (IN_PROGRESS_RUN_STATUSES leaves QUEUED out).
PENDING_OR_RUNNING = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, *IN_PROGRESS_RUN_STATUSES]


@dg.sensor(
    jobs=[shard_sync_job, remove_shard_job],
    minimum_interval_seconds=Settings.from_env().sensor_interval_seconds,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Lists the source (metadata only), adds new shards, runs changed shards, removes vanished ones.",
)
def source_change_sensor(
    context: dg.SensorEvaluationContext, source: SourceResource, model: ModelResource, qdrant: QdrantResource
):
    ensure_gpu_pool(context.instance)  # before the first run is queued, so the queue enforces it
    try:
        plans = plan_sync(context.instance, source.open(), index_settings(model, qdrant))
    except (FileNotFoundError, SettingsConflict) as exc:
        return dg.SkipReason(str(exc))
    busy = {
        run.tags.get(SHARD_TAG)
        for run in context.instance.get_runs(dg.RunsFilter(statuses=PENDING_OR_RUNNING, tags={SYNC_TAG: "sensor"}))
    }
    new = [p.shard for p in plans if p.status == "new" and not context.instance.has_dynamic_partition(shards.name, p.shard)]
    requests = []
    for plan in plans:
        if plan.shard in busy or plan.status == "unchanged":
            continue
        tags = {SYNC_TAG: "sensor", SHARD_TAG: plan.shard, "rag/status": plan.status}
        if plan.reason:
            tags["rag/reason"] = plan.reason
        if plan.status == "removed":
            requests.append(dg.RunRequest(job_name=remove_shard_job.name, run_config=remove_run_config(plan.shard), tags=tags))
        else:
            tags["rag/source_fingerprint"] = plan.fingerprint
            requests.append(dg.RunRequest(job_name=shard_sync_job.name, partition_key=plan.shard, tags=tags))
    context.log.info(f"{len(plans)} shards listed; requesting {len(requests)} runs")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[dg.AddDynamicPartitionsRequest(shards.name, new)] if new else [],
    )
