"""How `rag-assets` runs the project's jobs: in this process, recorded in the Dagster instance as runs of
the code location that workspace.yaml loads, so that the UI lists a CLI run under its job (Jobs ->
shard_sync_job -> Runs), on the Overview timeline and in the asset's history, next to the daemon's runs.

`JobDefinition.execute_in_process` records a run with no code-location origin: the UI files it under no
job of any location, and `dg.materialize` even names it `__ephemeral_asset_job__`. `execute_project_job`
is the same in-process execution (the same Dagster calls, in the same order) with the origin a run
launched by the webserver gets, and the project's own job definitions bound to the given resources.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

import dagster as dg
from dagster._core.definitions.job_base import InMemoryJob
from dagster._core.execution.api import ExecuteRunWithPlanIterable, create_execution_plan, job_execution_iterator
from dagster._core.execution.context_creation_job import PlanOrchestrationContextManager, orchestration_context_event_generator
from dagster._core.execution.execute_in_process import merge_run_tags
from dagster._core.execution.execute_in_process_result import ExecuteInProcessResult
from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

LOCATION_NAME = "rag_assets"  # workspace.yaml's location_name
REPOSITORY_NAME = "__repository__"  # Dagster's name for the one repository of a Definitions code location
DEFINITIONS_MODULE = "rag_assets.definitions"


def job_origin(job_name: str) -> RemoteJobOrigin:
    """The origin the webserver records for a launch of `job_name` from the project's code location."""
    target = LoadableTargetOrigin(executable_path=sys.executable, module_name=DEFINITIONS_MODULE, working_directory=os.getcwd())
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, LOCATION_NAME)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, REPOSITORY_NAME), job_name)


def project_job(job_name: str, resources: Mapping[str, object]) -> dg.JobDefinition:
    """The project's job `job_name` with `resources` bound, its steps executed in this process."""
    from rag_assets.defs import jobs
    from rag_assets.defs.assets import SHARD_ASSETS
    from rag_assets.defs.evaluation import retrieval_eval, retrieval_eval_job
    from rag_assets.defs.migration import migration_job

    project_jobs = [jobs.shard_sync_job, jobs.remove_shard_job, jobs.reconcile_job, jobs.maintenance_job, jobs.rollback_job,
                    retrieval_eval_job, migration_job]
    defs = dg.Definitions(assets=[*SHARD_ASSETS, retrieval_eval], jobs=project_jobs, resources=resources,
                          executor=dg.in_process_executor)
    return defs.resolve_job_def(job_name)


def execute_project_job(
    job_name: str,
    instance: dg.DagsterInstance,
    resources: Mapping[str, object],
    *,
    tags: Mapping[str, str],
    run_config: Mapping[str, object],
    partition_key: str | None = None,
) -> ExecuteInProcessResult:
    """Run the project's job `job_name` in this process (as `execute_in_process` does, never raising on a
    step failure) as a run of the project's code location. Returns Dagster's in-process result."""
    job_def = project_job(job_name, resources)
    job = InMemoryJob(job_def)
    run_tags = merge_run_tags(job_def, partition_key, tags, None, instance, run_config)
    plan = create_execution_plan(job, run_config=run_config, instance_ref=instance.get_ref() if instance.is_persistent else None)
    run = instance.create_run_for_job(
        job_def=job_def, run_config=run_config, tags={**job_def.run_tags, **run_tags}, execution_plan=plan,
        remote_job_origin=job_origin(job_name),
    )
    output_capture: dict = {}
    events = list(ExecuteRunWithPlanIterable(
        execution_plan=plan,
        iterator=job_execution_iterator,
        execution_context_manager=PlanOrchestrationContextManager(
            context_event_generator=orchestration_context_event_generator,
            job=job, execution_plan=plan, dagster_run=run, instance=instance, run_config=run_config,
            executor_defs=None, output_capture=output_capture, raise_on_error=False,
        ),
    ))
    return ExecuteInProcessResult(job_def=job_def, event_list=events, dagster_run=instance.get_run_by_id(run.run_id), output_capture=output_capture)
