"""Schedules, built from the settings when definitions load."""

import dagster as dg

from rag_assets.config import Settings
from rag_assets.defs.jobs import reconcile_job


def build_reconcile_schedule(settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="reconcile_schedule",
        job=reconcile_job,
        cron_schedule=settings.reconcile_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Nightly reconciliation of the index with vector_index (RAG_RECONCILE_CRON, UTC).",
    )


@dg.definitions
def schedule_defs() -> dg.Definitions:
    return dg.Definitions(schedules=[build_reconcile_schedule(Settings.from_env())])
