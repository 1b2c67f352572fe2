"""Run launchers: GPU runs go to GPU capacity, every other run to the default backend.

`GpuRoutingRunLauncher` (configured in dagster.yaml) decides per run: a run is a GPU run when any
step it executes carries the op tag `rag/gpu=true` (the `embeddings` asset does), or when the run
itself is tagged `rag/gpu=true`. It delegates to two configured launchers:

- `gpu_launcher`: `LocalGpuRunLauncher` on one host (a subprocess pinned to a free GPU through
  CUDA_VISIBLE_DEVICES), or dagster-aws's `EcsRunLauncher` with a GPU task definition and a GPU
  capacity provider strategy; `gpu_run_tags` are added to GPU runs first (for ECS: the GPU
  `resourceRequirements` container override).
- `default_launcher`: Dagster's `DefaultRunLauncher`, or a CPU `EcsRunLauncher`.

How many GPU runs may run at once is not this module's business: the `embeddings` asset is in the
Dagster concurrency pool `gpu`, whose limit (one slot per GPU) the run queue enforces, so backfills
over hundreds of shards queue instead of oversubscribing GPUs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster import _check as check
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, ResumeRunContext, RunLauncher, WorkerStatus
from dagster._core.storage.dagster_run import IN_PROGRESS_RUN_STATUSES, DagsterRun
from dagster._serdes import ConfigurableClass, ConfigurableClassData

from rag_assets.runs import DEVICE_TAG, GPU_TAG, PID_TAG, ROUTE_TAG, worker_tags

GPU_POOL = "gpu"  # Dagster concurrency pool of the GPU assets; its limit is the number of GPUs

_CLASS_SCHEMA = dg.Shape({"module": str, "class": str, "config": dg.Field(dg.Permissive(), is_required=False)})


def _load(spec: Mapping[str, Any] | None, default: RunLauncher) -> RunLauncher:
    if not spec:
        return default
    import yaml

    data = ConfigurableClassData(spec["module"], spec["class"], yaml.safe_dump(dict(spec.get("config") or {})))
    return data.rehydrate(as_type=RunLauncher)


def ensure_gpu_pool(instance: dg.DagsterInstance) -> None:
    """Create the `gpu` pool's limit (from `pools.default_limit`) if the instance has none yet.

    The run queue only enforces pools it already knows, and Dagster records a pool's default limit
    when it first sees a queued run needing it, after that pass's dequeue decisions: without this, the
    first runs of the first backfill would all start at once. Called by the sensor and the launcher.
    """
    storage = instance.event_log_storage
    if storage.supports_global_concurrency_limits and GPU_POOL not in storage.get_concurrency_keys():
        storage.initialize_concurrency_limit_to_default(GPU_POOL)


def wants_gpu(instance: dg.DagsterInstance, run: DagsterRun) -> bool:
    """True when the run asks for a GPU by tag, or executes a step whose op is tagged for one."""
    if run.tags.get(GPU_TAG) == "true":
        return True
    if not run.execution_plan_snapshot_id:
        return False
    plan = instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
    selected = set(run.step_keys_to_execute) if run.step_keys_to_execute else None
    return any(
        (step.tags or {}).get(GPU_TAG) == "true" for step in plan.steps if selected is None or step.key in selected
    )


class _ConfiguredLauncher(RunLauncher, ConfigurableClass):
    """A run launcher built from its dagster.yaml config (the ConfigurableClass plumbing, once)."""

    _inst_data: ConfigurableClassData | None = None

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]):
        return cls(inst_data=inst_data, **config_value)


class GpuRoutingRunLauncher(_ConfiguredLauncher):
    def __init__(
        self,
        inst_data: ConfigurableClassData | None = None,
        gpu_launcher: Mapping[str, Any] | None = None,
        default_launcher: Mapping[str, Any] | None = None,
        gpu_run_tags: Mapping[str, str] | None = None,
    ):
        self._inst_data = inst_data
        self.gpu = _load(gpu_launcher, LocalGpuRunLauncher())
        self.default = _load(default_launcher, dg.DefaultRunLauncher())
        self.gpu_run_tags = dict(gpu_run_tags or {})
        super().__init__()

    @classmethod
    def config_type(cls):
        return {
            "gpu_launcher": dg.Field(_CLASS_SCHEMA, is_required=False, description="Launcher for GPU runs (default: LocalGpuRunLauncher)."),
            "default_launcher": dg.Field(_CLASS_SCHEMA, is_required=False, description="Launcher for all other runs (default: DefaultRunLauncher)."),
            "gpu_run_tags": dg.Field(dg.Permissive(), is_required=False, description="Tags added to GPU runs before launch (e.g. ecs/container_overrides)."),
        }

    def register_instance(self, instance) -> None:
        super().register_instance(instance)
        for launcher in (self.gpu, self.default):
            launcher.register_instance(instance)
        ensure_gpu_pool(instance)

    def _route(self, run: DagsterRun) -> RunLauncher:
        return self.gpu if run.tags.get(ROUTE_TAG) == "gpu" else self.default

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        gpu = wants_gpu(self._instance, run)
        tags = {ROUTE_TAG: "gpu" if gpu else "default", **(self.gpu_run_tags if gpu else {})}
        self._instance.add_run_tags(run.run_id, tags)
        run = check.not_none(self._instance.get_run_by_id(run.run_id))
        self._instance.report_engine_event(
            f"{'GPU' if gpu else 'default'} launcher: {type(self._route(run)).__name__}", run, cls=self.__class__
        )
        self._route(run).launch_run(LaunchRunContext(dagster_run=run, workspace=context.workspace))

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        return bool(run) and self._route(run).terminate(run_id)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return self.gpu.supports_check_run_worker_health and self.default.supports_check_run_worker_health

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        return self._route(run).check_run_worker_health(run)

    @property
    def supports_resume_run(self) -> bool:
        return self.gpu.supports_resume_run and self.default.supports_resume_run

    def resume_run(self, context: ResumeRunContext) -> None:
        self._route(context.dagster_run).resume_run(context)

    def dispose(self) -> None:
        self.gpu.dispose()
        self.default.dispose()

    def join(self, timeout: int = 30) -> None:
        self.gpu.join(timeout)
        self.default.join(timeout)


# ---------------------------------------------------------------------------------------------------
# One host: a run process pinned to a free GPU.


def visible_gpus() -> list[str]:
    """GPU indices `nvidia-smi` reports on this host (none without a driver); no torch import needed."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()] if out.returncode == 0 else []


class NoFreeGpu(RuntimeError):
    pass


class LocalGpuRunLauncher(_ConfiguredLauncher):
    """Starts the run worker (`dagster api execute_run`) as a subprocess with CUDA_VISIBLE_DEVICES set to
    one GPU no other in-flight run holds. `devices` lists the GPUs to use (default: all nvidia-smi shows).
    With no GPU: `when_no_gpu: cpu` (default) runs it on the CPU and says so in the run's events;
    `when_no_gpu: fail` fails the launch with that message."""

    def __init__(self, inst_data: ConfigurableClassData | None = None, devices: list[str] | None = None, when_no_gpu: str = "cpu"):
        self._inst_data = inst_data
        self.devices = [str(d) for d in devices] if devices is not None else None
        if when_no_gpu not in ("cpu", "fail"):
            raise ValueError(f"when_no_gpu must be 'cpu' or 'fail', got {when_no_gpu!r}")
        self.when_no_gpu = when_no_gpu
        self._procs: dict[str, subprocess.Popen] = {}
        super().__init__()

    @classmethod
    def config_type(cls):
        return {
            "devices": dg.Field([str], is_required=False, description="GPU indices to use; default: every GPU nvidia-smi lists."),
            "when_no_gpu": dg.Field(str, is_required=False, default_value="cpu", description="'cpu' or 'fail' when the host has no GPU."),
        }

    def pick_device(self, run: DagsterRun) -> str:
        """A GPU index no other in-flight run holds, or "" for CPU when the host has none."""
        devices = self.devices if self.devices is not None else visible_gpus()
        if not devices:
            message = "no GPU on this host (nvidia-smi lists none)"
            if self.when_no_gpu == "fail":
                raise NoFreeGpu(f"{message}: the GPU run launcher is configured with when_no_gpu: fail")
            self._instance.report_engine_event(f"{message}: this GPU run executes on the CPU", run, cls=self.__class__)
            return ""
        held = {
            r.tags.get(DEVICE_TAG)
            for r in self._instance.get_runs(dg.RunsFilter(statuses=IN_PROGRESS_RUN_STATUSES))
            if r.run_id != run.run_id
        }
        free = [d for d in devices if d not in held]
        if not free:
            raise NoFreeGpu(
                f"all {len(devices)} GPUs ({', '.join(devices)}) hold a run; set the `gpu` pool limit to {len(devices)} "
                "(`dagster instance concurrency set gpu N`) so the queue never launches more GPU runs than GPUs"
            )
        return free[0]

    def launch_run(self, context: LaunchRunContext) -> None:
        from dagster._grpc.types import ExecuteRunArgs
        from dagster._serdes import serialize_value

        run = context.dagster_run
        device = self.pick_device(run)
        args = ExecuteRunArgs(
            job_origin=check.not_none(context.job_code_origin), run_id=run.run_id, instance_ref=self._instance.get_ref()
        )
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": device}
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagster", "api", "execute_run", serialize_value(args)],
            env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        )
        self._procs[run.run_id] = proc
        self._instance.add_run_tags(run.run_id, {DEVICE_TAG: device, **worker_tags(proc.pid)})
        self._instance.report_engine_event(
            f"run worker pid {proc.pid} started with CUDA_VISIBLE_DEVICES={device!r}", run, cls=self.__class__
        )

    def _alive(self, run: DagsterRun) -> bool:
        proc = self._procs.get(run.run_id)
        if proc is not None:
            return proc.poll() is None
        pid = run.tags.get(PID_TAG)
        if not pid:
            return False
        try:
            os.kill(int(pid), 0)  # launched by an earlier daemon process on this host
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if not run or not self._alive(run):
            return False
        self._instance.report_run_canceling(run)
        os.killpg(int(run.tags[PID_TAG]), signal.SIGTERM)  # the worker's own session: it and its children
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        if self._alive(run):
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        return CheckRunHealthResult(WorkerStatus.NOT_FOUND, f"run worker pid {run.tags.get(PID_TAG)} is gone")

    def join(self, timeout: int = 30) -> None:
        for proc in self._procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass

