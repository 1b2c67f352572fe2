"""The sensor that keeps the index in step with the source (`shard_state.plan_sync` decides what runs)."""

import dagster as dg

from rag_assets.config import Settings
from rag_assets.defs.evaluation import eval_request_after_sync, retrieval_eval_job
from rag_assets.defs.jobs import remove_run_config, remove_shard_job, shard_sync_job
from rag_assets.defs.partitions import shards
from rag_assets.defs.resources import ModelResource, QdrantResource, SourceResource
from rag_assets.deletion_guard import held_shards
from rag_assets.launcher import ensure_gpu_pool
from rag_assets.runs import busy_shards, shard_run_tags
from rag_assets.shard_state import SettingsConflict, check_live, index_settings, plan_sync


def build_source_change_sensor(settings: Settings) -> dg.SensorDefinition:
    @dg.sensor(
        jobs=[shard_sync_job, remove_shard_job, retrieval_eval_job],
        minimum_interval_seconds=settings.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Lists the source (metadata only), adds new shards, runs changed shards, removes vanished ones; "
        "once they have settled, evaluates the collection (retrieval_eval, RAG_EVAL_AFTER_SYNC).",
    )
    def source_change_sensor(
        context: dg.SensorEvaluationContext, source: SourceResource, model: ModelResource, qdrant: QdrantResource
    ):
        ensure_gpu_pool(context.instance)  # before the first run is queued, so the queue enforces it
        src = source.open()
        try:
            check_live(model, qdrant)
            plans = plan_sync(context.instance, src, index_settings(model, qdrant))
        except (FileNotFoundError, SettingsConflict) as exc:
            return dg.SkipReason(str(exc))
        for name, why in src.skipped.items():  # not shards: reported at every tick, never skipped in silence
            context.log.warning(f"source entry {name!r} is not a shard: {why}")
        busy = busy_shards(context.instance)  # a shard with a run queued or running is left to that run
        known = set(context.instance.get_dynamic_partitions(shards.name))
        new = [p.shard for p in plans if p.status == "new" and p.shard not in known]
        held = held_shards(context.instance, plans, len(known), source.max_delete_fraction, allowed=False)
        for shard, why in sorted(held.items()):  # in the tick's log in the UI, at every tick while it lasts
            context.log.warning(f"shard {shard!r} held: {why}")
        requests = []
        for plan in plans:
            if plan.shard in busy or plan.shard in held or plan.status == "unchanged":
                continue
            tags = shard_run_tags("sensor", plan.shard, plan.status, plan.reason, plan.fingerprint)
            if plan.status == "removed":
                requests.append(dg.RunRequest(job_name=remove_shard_job.name, run_config=remove_run_config(plan.shard), tags=tags))
            else:
                requests.append(dg.RunRequest(job_name=shard_sync_job.name, partition_key=plan.shard, tags=tags))
        if settings.eval_after_sync and not requests and not busy:  # the shard runs have settled
            requests.extend(eval_request_after_sync(context.instance))
        context.log.info(f"{len(plans)} shards listed; requesting {len(requests)} runs")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=[dg.AddDynamicPartitionsRequest(shards.name, new)] if new else [],
        )

    return source_change_sensor


@dg.definitions
def sensor_defs() -> dg.Definitions:
    return dg.Definitions(sensors=[build_source_change_sensor(Settings.from_env())])
