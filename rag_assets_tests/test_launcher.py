"""The GPU routing run launcher on a real instance configured by the shipped dagster.yaml."""

import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.launcher import LaunchRunContext

from rag_assets.launcher import DEVICE_TAG, ROUTE_TAG, GpuRoutingRunLauncher, LocalGpuRunLauncher, NoFreeGpu, wants_gpu
from rag_assets_tests.conftest import write_corpus

ROOT = Path(__file__).parents[1]


def instance_with(env, **gpu_config) -> dg.DagsterInstance:
    """The shipped dagster.yaml, with the local GPU launcher's config replaced by `gpu_config`."""
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    config["run_launcher"]["config"]["gpu_launcher"]["config"] = gpu_config
    (env.dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config))
    return dg.DagsterInstance.from_config(str(env.dagster_home))


def create_run(instance, job_name: str, tags=None, asset_selection=None, run_config=None):
    repo = ReconstructableRepository.for_module("rag_assets.definitions", "defs", working_directory=str(ROOT))
    job = repo.get_reconstructable_job(job_name)
    from rag_assets.definitions import defs

    job_def = defs().resolve_job_def(job_name)
    if asset_selection:
        job_def = job_def.get_subset(asset_selection=asset_selection)
    return instance.create_run_for_job(
        job_def, tags=tags or {}, run_config=run_config, asset_selection=asset_selection,
        job_code_origin=job.get_python_origin(),
    )


def test_runs_that_embed_are_gpu_runs_and_others_are_not(rag_env):
    from rag_assets.defs.jobs import remove_run_config

    instance = instance_with(rag_env, when_no_gpu="cpu")
    assert isinstance(instance.run_launcher, GpuRoutingRunLauncher)
    instance.add_dynamic_partitions("shards", ["alpha"])
    part = {"dagster/partition": "alpha"}
    assert wants_gpu(instance, create_run(instance, "shard_sync_job", tags=part))
    assert wants_gpu(instance, create_run(instance, "shard_sync_job", tags=part, asset_selection={dg.AssetKey("embeddings")}))
    assert not wants_gpu(instance, create_run(instance, "shard_sync_job", tags=part, asset_selection={dg.AssetKey("raw_documents"), dg.AssetKey("chunks")}))
    assert not wants_gpu(instance, create_run(instance, "remove_shard_job", run_config=remove_run_config("alpha")))
    assert not wants_gpu(instance, create_run(instance, "reconcile_job"))
    assert wants_gpu(instance, create_run(instance, "reconcile_job", tags={"rag/gpu": "true"}))  # asked for by run tag


def test_local_gpu_launcher_gives_each_run_a_free_gpu_and_never_two_runs_one(rag_env):
    instance = instance_with(rag_env, devices=["0", "1"])
    launcher = instance.run_launcher.gpu
    assert isinstance(launcher, LocalGpuRunLauncher)
    runs = [create_run(instance, "reconcile_job") for _ in range(3)]
    assert launcher.pick_device(runs[0]) == "0"
    instance.add_run_tags(runs[0].run_id, {DEVICE_TAG: "0"})
    instance.handle_run_event(runs[0].run_id, dg.DagsterEvent("PIPELINE_START", job_name="reconcile_job"))
    assert launcher.pick_device(runs[1]) == "1"
    instance.add_run_tags(runs[1].run_id, {DEVICE_TAG: "1"})
    instance.handle_run_event(runs[1].run_id, dg.DagsterEvent("PIPELINE_START", job_name="reconcile_job"))
    with pytest.raises(NoFreeGpu, match="pool limit to 2"):
        launcher.pick_device(runs[2])


def test_no_gpu_fails_clearly_when_configured_so(rag_env):
    instance = instance_with(rag_env, devices=[], when_no_gpu="fail")
    run = create_run(instance, "reconcile_job")
    with pytest.raises(NoFreeGpu, match="no GPU on this host"):
        instance.run_launcher.gpu.pick_device(run)


def wait_finished(instance, run_id: str, timeout: float = 240) -> dg.DagsterRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        if run.is_finished:
            return run
        time.sleep(1)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s")


@pytest.mark.timeout(400)
def test_a_shard_run_is_launched_pinned_to_a_gpu_and_embeds_there(rag_env):
    """Through the routing launcher for real: a run worker process with CUDA_VISIBLE_DEVICES set."""
    write_corpus(rag_env.source)
    shutil.rmtree(rag_env.source / "beta")
    shutil.rmtree(rag_env.source / "gamma")
    instance = instance_with(rag_env, devices=["3"])
    instance.add_dynamic_partitions("shards", ["alpha"])
    gpu_run = create_run(instance, "shard_sync_job", tags={"dagster/partition": "alpha"})
    instance.run_launcher.launch_run(LaunchRunContext(dagster_run=gpu_run, workspace=None))
    done = wait_finished(instance, gpu_run.run_id)
    assert done.status == dg.DagsterRunStatus.SUCCESS, [e.message for e in instance.all_logs(gpu_run.run_id) if e.message][-5:]
    assert done.tags[ROUTE_TAG] == "gpu" and done.tags[DEVICE_TAG] == "3"
    meta = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("embeddings"), asset_partitions=["alpha"]), limit=1
    ).records[0].asset_materialization.metadata
    assert meta["cuda_visible_devices"].value == "3"  # what the run process itself saw
    assert meta["embedded"].value > 0
