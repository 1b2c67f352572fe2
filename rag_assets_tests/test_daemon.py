"""The sensor under the Dagster daemon's own evaluation: a real `dagster-daemon run` subprocess.

Nothing here calls the sensor function. The daemon evaluates `source_change_sensor` on its own
ticks (it is RUNNING by default), its queued run coordinator dequeues the requested runs, and the
default run launcher executes each in a subprocess. The test only changes the source folder and
watches the instance (runs, ticks, dynamic partitions), the Iceberg tables and the index.

The failed-run case needs a failure whose cause the test controls without any hook in the
project: the embedded index's folder (under RAG_HOME, which only runs open, never the sensor) is
moved aside and a plain file put in its place while one run executes, then put back, as when a
volume is briefly unavailable. The run fails in its last step, `vector_index`, after the Iceberg
tables were written, so the newest `vector_index` materialization still has the old fingerprint.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner
from dagster._core.events import DagsterEventType
from dagster._core.scheduler.instigation import InstigatorType, TickStatus
from dagster._core.storage.dagster_run import FINISHED_STATUSES

from rag_assets.cli import main
from rag_assets.shard_state import index_settings, plan_sync
from rag_assets.runs import SYNC_TAG
from rag_assets.tables import ALL_TABLES, RAW_DOCUMENTS, VECTOR_INDEX
from rag_assets_tests.conftest import RagEnv, make_env

SENSOR = "source_change_sensor"
SHARD_TAG = "rag/shard"
INTERVAL = 2  # RAG_SENSOR_INTERVAL_SECONDS (the daemon's sensor loop itself runs about every 5 s)
RUN_TIMEOUT = 240  # seconds for requested runs to finish (each run imports torch and loads the model)

CORPUS = {
    "north": {
        "lighthouse.md": "# Lighthouses\n\nA lighthouse keeper trims the lamp wick every evening before dusk.\n",
        "orchard.md": "# Orchards\n\nApple trees are pruned in late winter while they are dormant.\n",
    },
    "south": {
        "desert.md": "# Deserts\n\nCamels store fat in their humps and can go days without water.\n",
        "reef.txt": "Coral reefs\n\nParrotfish grind coral into the white sand of tropical beaches.\n",
    },
}
EDITED = "# Lighthouses\n\nZephyr the lighthouse cat paints violet spirals on the foghorn every Tuesday.\n"
EDITED_WHILE_BROKEN = "# Orchards\n\nQuince marmalade simmers with saffron threads in copper kettles.\n"


def write_file(path: Path, text: str) -> None:
    """Atomically (a hidden temp file, which listings skip, then a rename): a tick never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp"
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class Daemon:
    proc: subprocess.Popen
    log: Path
    env: RagEnv
    instance: dg.DagsterInstance

    # -- reading the instance -----------------------------------------------------------------------

    def runs(self, since: float = 0.0) -> list[dg.RunRecord]:
        """Runs the sensor requested, created after `since` (epoch seconds), oldest first."""
        records = self.instance.get_run_records(dg.RunsFilter(tags={SYNC_TAG: "sensor"}), order_by="create_timestamp", ascending=True)
        return [r for r in records if r.create_timestamp.timestamp() > since]

    def ticks(self, after: float | None = None):
        """The sensor's ticks recorded by the daemon, newest first."""
        states = [s for s in self.instance.all_instigator_state(instigator_type=InstigatorType.SENSOR) if s.instigator_name == SENSOR]
        if not states:
            return []
        assert len(states) == 1, states
        return self.instance.get_ticks(states[0].instigator_origin_id, states[0].selector_id, after=after)

    def failure_messages(self, run_id: str) -> list[str]:
        events = self.instance.all_logs(run_id, of_type={DagsterEventType.STEP_FAILURE, DagsterEventType.RUN_FAILURE})
        out = []
        for e in events:
            data = e.dagster_event.event_specific_data
            error = getattr(data, "error", None)
            out.append(f"{e.dagster_event.step_key or 'run'}: {error.message.strip() if error else e.message}")
        return out

    # -- diagnostics ---------------------------------------------------------------------------------

    def log_tail(self, chars: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-chars:]

    def report(self) -> str:
        lines = ["sensor runs:"]
        for r in self.runs():
            run = r.dagster_run
            lines.append(f"  {run.run_id[:8]} {run.job_name} shard={run.tags.get(SHARD_TAG)} "
                         f"status={run.status.value} rag/status={run.tags.get('rag/status')}")
            if run.status == dg.DagsterRunStatus.FAILURE:
                lines += [f"    {m[:300]}" for m in self.failure_messages(run.run_id)]
        lines.append("last ticks:")
        for t in self.ticks()[:8]:
            lines.append(f"  {time.strftime('%H:%M:%S', time.localtime(t.timestamp))} {t.status.value} "
                         f"runs={[i[:8] for i in t.run_ids]} skip={t.skip_reason!r} error={t.error.message[:300] if t.error else None}")
        lines.append(f"daemon exit code: {self.proc.poll()}")
        lines.append("daemon output (tail):\n" + self.log_tail())
        return "\n".join(lines)

    def fail(self, message: str):
        pytest.fail(f"{message}\n{self.report()}", pytrace=False)

    def check(self, condition: bool, message: str) -> None:
        if not condition:
            self.fail(message)

    def wait_for(self, what: str, predicate, timeout: float = RUN_TIMEOUT):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                self.fail(f"the daemon exited while waiting for {what}")
            if time.monotonic() > deadline:
                self.fail(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.5)

    # -- waiting for the daemon's work ---------------------------------------------------------------

    def settle(self, since: float, what: str, expected: int | None = None) -> list[dg.RunRecord]:
        """Wait until the runs requested after `since` (exactly `expected` of them, or at least one) all
        finished and a later tick (after the last one ended) requested nothing; returns those runs."""
        def finished():
            rs = self.runs(since)
            if expected is not None and len(rs) > expected:
                self.fail(f"{what}: {len(rs)} runs requested, expected {expected} (a shard requested twice?)")
            done = rs and len(rs) >= (expected or 1) and all(r.dagster_run.status in FINISHED_STATUSES for r in rs)
            return rs if done else None

        runs = self.wait_for(f"{what}: {expected or 'some'} run(s) requested and finished", finished)
        self.quiet_tick(max(r.end_time or 0 for r in runs), what)
        runs = self.runs(since)
        self.check(expected is None or len(runs) == expected, f"{what}: expected {expected} runs, got {len(runs)}")
        return runs

    def quiet_tick(self, after: float, what: str):
        """A tick that started after `after` and requested no runs (no change left to act on)."""
        def quiet():
            for t in self.ticks(after=after):
                if t.status in (TickStatus.SKIPPED, TickStatus.SUCCESS) and not t.run_ids:
                    return t
                if t.status == TickStatus.FAILURE:
                    self.fail(f"{what}: a sensor tick failed")
            return None

        return self.wait_for(f"{what}: a later tick that requests no runs", quiet, timeout=60)


def start_daemon(env: RagEnv) -> Daemon:
    log = env.dagster_home / "daemon.log"
    daemon_bin = Path(sys.executable).parent / "dagster-daemon"
    workspace = env.dagster_home / "workspace.yaml"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(daemon_bin), "run", "-w", str(workspace)],
            cwd=env.dagster_home, env=os.environ.copy(), stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,  # its own process group: code server and runs too
        )
    return Daemon(proc, log, env, dg.DagsterInstance.get())


def stop_daemon(proc: subprocess.Popen) -> None:
    """SIGTERM to the daemon's process group, then SIGKILL whatever is left (runs, code server)."""
    pgid = proc.pid  # start_new_session: the daemon leads its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("daemon")
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(tmp, mp, RAG_SENSOR_INTERVAL_SECONDS=str(INTERVAL))
        shutil.copy(Path(__file__).parents[1] / "dagster.yaml", env.dagster_home / "dagster.yaml")  # the shipped instance config
        (env.dagster_home / "workspace.yaml").write_text(
            "load_from:\n  - python_module:\n      module_name: rag_assets.definitions\n      location_name: rag_assets\n"
        )
        for shard, files in CORPUS.items():
            for name, text in files.items():
                write_file(env.source / shard / name, text)
        d = start_daemon(env)
        try:
            yield d
        finally:
            stop_daemon(d.proc)


def search_top(query: str) -> dict:
    result = CliRunner().invoke(main, ["search", query, "-k", "1", "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["hits"][0]


def read_rows(env: RagEnv, spec, shard: str):
    return env.resources()["iceberg"].lakehouse().read_partition(spec, shard)


def assert_in_sync(d: Daemon, shards: set[str]) -> None:
    res = d.env.resources()
    plans = plan_sync(d.instance, res["source"].open(), index_settings(res["model"], res["qdrant"]))
    d.check({p.shard: p.status for p in plans} == {s: "unchanged" for s in shards},
            f"plan_sync after the runs: {[(p.shard, p.status) for p in plans]}")
    d.check(set(d.instance.get_dynamic_partitions("shards")) == shards,
            f"partitions: {d.instance.get_dynamic_partitions('shards')}, expected {sorted(shards)}")


@pytest.mark.timeout(600)
def test_daemon_sensor_keeps_the_index_in_sync(daemon: Daemon):
    d, env = daemon, daemon.env
    started = time.monotonic()

    def phase_done(name: str) -> None:
        print(f"{name}: done at {time.monotonic() - started:.0f}s")

    # 1. Two new shards: the sensor adds both partitions and requests one shard_sync_job run each.
    runs = d.settle(0.0, "initial sync", expected=2)
    by_shard = {r.dagster_run.tags.get(SHARD_TAG): r.dagster_run for r in runs}
    d.check(set(by_shard) == {"north", "south"}, "expected exactly one run per shard")
    for shard, run in by_shard.items():
        d.check(run.job_name == "shard_sync_job" and run.tags.get("dagster/partition") == shard
                and run.tags.get("rag/status") == "new", f"run for {shard}: {run.job_name} {run.tags}")
        d.check(run.status == dg.DagsterRunStatus.SUCCESS, f"run for {shard} did not succeed")
        # Shard runs embed, so the routing launcher sent them to the GPU launcher; this host has no
        # GPU, so the run worker got no device and the run's events say so.
        d.check(run.tags.get("rag/launcher") == "gpu" and run.tags.get("rag/gpu_device") == "", f"routing: {run.tags}")
        events = [e.message for e in d.instance.all_logs(run.run_id) if e.message]
        d.check(any("no GPU on this host" in m for m in events), "the CPU fallback is reported in the run's events")
    # Both runs embed, so both need the `gpu` pool, whose limit is 1 in the shipped dagster.yaml: the
    # queue ran them one after the other although max_concurrent_runs would allow both at once.
    first, second = sorted(runs, key=lambda r: r.start_time)
    d.check(first.end_time <= second.start_time, "two embedding runs overlapped despite the gpu pool limit of 1")
    requested = {i for t in d.ticks() for i in t.run_ids}
    d.check(requested == {r.dagster_run.run_id for r in runs}, "every run must come from a sensor tick")
    assert_in_sync(d, {"north", "south"})
    count_after_initial = len(d.runs())

    phase_done("1 initial sync")

    # 2. One edited document: one run, for that shard only; the index serves the new text.
    mark = time.time()
    write_file(env.source / "north" / "lighthouse.md", EDITED)
    runs = d.settle(mark, "edit in north", expected=1)
    run = runs[0].dagster_run
    d.check(run.job_name == "shard_sync_job" and run.tags.get("dagster/partition") == "north"
            and run.tags.get(SHARD_TAG) == "north" and run.tags.get("rag/status") == "changed", f"edit run: {run.tags}")
    d.check(run.status == dg.DagsterRunStatus.SUCCESS, "edit run did not succeed")
    d.check(len(d.runs()) == count_after_initial + 1, "no run other than the edit's")
    assert_in_sync(d, {"north", "south"})
    docs = read_rows(env, RAW_DOCUMENTS, "north").to_pylist()
    d.check(any("violet spirals" in doc["text"] for doc in docs), "raw_documents holds the edited text")
    hit = search_top("cat painting spirals on a foghorn")
    d.check(hit["doc_id"] == "north/lighthouse.md" and "violet spirals" in hit["text"], f"search after edit: {hit}")

    phase_done("2 edit")

    # 3. A vanished shard: one remove_shard_job run; its partition, rows and points are gone.
    mark = time.time()
    trash = env.source / ".south-removed"
    os.rename(env.source / "south", trash)  # atomic: no tick sees a half-deleted folder
    runs = d.settle(mark, "removal of south", expected=1)
    run = runs[0].dagster_run
    d.check(run.job_name == "remove_shard_job" and run.tags.get(SHARD_TAG) == "south"
            and run.tags.get("rag/status") == "removed", f"removal run: {run.job_name} {run.tags}")
    d.check(run.status == dg.DagsterRunStatus.SUCCESS, "removal run did not succeed")
    d.check(run.tags.get("rag/launcher") == "default", f"a removal run needs no GPU: {run.tags}")
    assert_in_sync(d, {"north"})
    for spec in ALL_TABLES:
        d.check(read_rows(env, spec, "south").num_rows == 0, f"{spec.name} still has rows of south")
    d.check(read_rows(env, VECTOR_INDEX, "north").num_rows > 0, "north's rows must stay")
    with env.resources()["qdrant"].index().session() as session:
        d.check(session.count("south") == 0, "south's points are still in the index")
        d.check(session.count() == session.count("north") == read_rows(env, VECTOR_INDEX, "north").num_rows,
                "the index holds exactly north's vector_index rows")

    phase_done("3 removal")

    # 4. A failed run is retried on a later tick: the index's folder is unavailable during one run.
    index_dir = env.home / "qdrant"
    away = env.home / ".qdrant-away"
    mark = time.time()
    os.rename(index_dir, away)
    try:
        index_dir.write_text("not a folder")  # the run's index session cannot create or open the collection
        write_file(env.source / "north" / "orchard.md", EDITED_WHILE_BROKEN)
        first = d.wait_for(
            "the run for the edit made while the index is unavailable to finish",
            lambda: (rs := d.runs(mark)) and rs[0].dagster_run.status in FINISHED_STATUSES and rs[0],
        )
    finally:
        index_dir.unlink(missing_ok=True)
        os.rename(away, index_dir)
    failed = first.dagster_run
    d.check(failed.status == dg.DagsterRunStatus.FAILURE, "the run without its index folder must fail")
    d.check(failed.tags.get(SHARD_TAG) == "north" and failed.tags.get("rag/status") == "changed", f"failed run: {failed.tags}")
    messages = d.failure_messages(failed.run_id)
    d.check(any(m.startswith("vector_index") for m in messages), f"expected the vector_index step to fail: {messages}")
    retried = d.wait_for(
        "a later run for north to succeed",
        lambda: next((r for r in d.runs(mark) if r.dagster_run.status == dg.DagsterRunStatus.SUCCESS), None),
    )
    runs = d.settle(mark, "retry of north")
    d.check(all(r.dagster_run.tags.get(SHARD_TAG) == "north" and r.dagster_run.job_name == "shard_sync_job" for r in runs),
            "only north is run")
    d.check(retried.create_timestamp.timestamp() > first.end_time, "the retry was requested after the failed run ended")
    d.check(retried.dagster_run.tags.get("rag/status") == "changed", f"retry run: {retried.dagster_run.tags}")
    retry_ticks = [t for t in d.ticks() if retried.dagster_run.run_id in t.run_ids]
    first_ticks = [t for t in d.ticks() if failed.run_id in t.run_ids]
    d.check(len(retry_ticks) == 1 and len(first_ticks) == 1 and retry_ticks[0].tick_id != first_ticks[0].tick_id,
            "the retry comes from a later tick than the failed run")
    d.check(runs[-1].dagster_run.run_id == retried.dagster_run.run_id, "no run after the successful retry")
    # The failed run's embeddings were committed; the retry reuses them instead of embedding again.
    emb = d.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("embeddings"), asset_partitions=["north"]), limit=1
    ).records[0]
    d.check(emb.run_id == retried.dagster_run.run_id and emb.asset_materialization.metadata["embedded"].value == 0,
            "the retry re-embedded chunks the failed run had already embedded")
    assert_in_sync(d, {"north"})
    hit = search_top("quince marmalade with saffron")
    d.check(hit["doc_id"] == "north/orchard.md" and "saffron" in hit["text"], f"search after retry: {hit}")
    phase_done("4 failed run retried")
