"""Schedules, built from the settings when definitions load."""

import dagster as dg

from rag_assets.config import Settings
from rag_assets.defs.jobs import maintenance_job, reconcile_job


def build_reconcile_schedule(settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="reconcile_schedule",
        job=reconcile_job,
        cron_schedule=settings.reconcile_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Nightly reconciliation of the index with vector_index (RAG_RECONCILE_CRON, UTC).",
    )


def build_maintenance_schedule(settings: Settings) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name="maintenance_schedule",
        job=maintenance_job,
        cron_schedule=settings.maintenance_cron,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Nightly table maintenance and run-history cleanup (RAG_MAINTENANCE_CRON, UTC).",
    )


@dg.definitions
def schedule_defs() -> dg.Definitions:
    settings = Settings.from_env()
    return dg.Definitions(schedules=[build_reconcile_schedule(settings), build_maintenance_schedule(settings)])
