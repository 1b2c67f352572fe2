"""Schedules, built from the settings when definitions load."""

import dagster as dg

from rag_assets.config import Settings
from rag_assets.defs.evaluation import retrieval_eval_job
from rag_assets.defs.jobs import maintenance_job, reconcile_job


def nightly(name: str, job, cron: str, description: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(name=name, job=job, cron_schedule=cron, description=description,
                                 default_status=dg.DefaultScheduleStatus.RUNNING)


def build_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    return [
        nightly("reconcile_schedule", reconcile_job, settings.reconcile_cron,
                "Nightly reconciliation of the index with vector_index (RAG_RECONCILE_CRON, UTC)."),
        nightly("maintenance_schedule", maintenance_job, settings.maintenance_cron,
                "Nightly table maintenance and run-history cleanup (RAG_MAINTENANCE_CRON, UTC)."),
        nightly("retrieval_eval_schedule", retrieval_eval_job, settings.eval_cron,
                "Nightly retrieval evaluation of the live collection, besides the one after syncs (RAG_EVAL_CRON, UTC)."),
    ]


@dg.definitions
def schedule_defs() -> dg.Definitions:
    return dg.Definitions(schedules=build_schedules(Settings.from_env()))
