"""What a user does in the UI, against real `dagster-webserver` and `dagster-daemon` processes.

Everything goes through the webserver's GraphQL API, which is all the UI itself uses: stop the sensor,
add the shards as partitions, launch a backfill of the four assets over every shard, then start the
sensor and let it pick up an edited file. The daemon does the rest (backfill daemon, run queue, the
GPU routing launcher, sensor ticks); the test checks the tables, the index and search.
"""

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from dagster._core.scheduler.instigation import TickStatus

from rag_assets.defs.assets import SHARD_ASSETS
from rag_assets_tests.conftest import make_env
from rag_assets_tests.emulators import free_port
from rag_assets_tests.test_daemon import search_top, start_daemon, stop_daemon, write_file

ROOT = Path(__file__).parents[1]
REPO = {"repositoryLocationName": "rag_assets", "repositoryName": "__repository__"}
SENSOR = {**REPO, "sensorName": "source_change_sensor"}
CORPUS = {
    "east": {"kiln.md": "# Kilns\n\nA potter fires stoneware in the kiln until the glaze melts into glass.\n"},
    "west": {"sled.md": "# Sleds\n\nHuskies pull the sled across the frozen tundra in a long line.\n"},
}
TIMEOUT = 300


class Webserver:
    def __init__(self, env, port: int):
        self.url = f"http://127.0.0.1:{port}"
        self.log = env.dagster_home / "webserver.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("dagster-webserver")), "-w", str(env.dagster_home / "workspace.yaml"),
                 "-h", "127.0.0.1", "-p", str(port)],
                cwd=env.dagster_home, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def gql(self, query: str, **variables) -> dict:
        response = requests.post(f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60)
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                data = self.gql("{ repositoryOrError(repositorySelector: {repositoryLocationName: \"rag_assets\", repositoryName: \"__repository__\"}) { __typename } }")
                if data["repositoryOrError"]["__typename"] == "Repository":
                    return
            except requests.RequestException:
                pass
            time.sleep(1)
        pytest.fail("webserver did not load the code location:\n" + self.log.read_text()[-3000:])


def wait_for(what: str, predicate, diagnostics, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}\n{diagnostics()}")


@pytest.fixture
def stack(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch, RAG_SENSOR_INTERVAL_SECONDS="2")
    shutil.copy(ROOT / "dagster.yaml", env.dagster_home / "dagster.yaml")  # the shipped instance config
    (env.dagster_home / "workspace.yaml").write_text(
        "load_from:\n  - python_module:\n      module_name: rag_assets.definitions\n      location_name: rag_assets\n"
    )
    for shard, files in CORPUS.items():
        for name, text in files.items():
            write_file(env.source / shard / name, text)
    web = Webserver(env, free_port())
    daemons = []
    try:
        web.wait_ready()
        yield env, web, lambda: daemons.append(start_daemon(env)) or daemons[-1]
    finally:
        for process in [d.proc for d in daemons] + [web.proc]:
            stop_daemon(process)


def test_backfill_from_the_ui_then_the_sensor_picks_up_an_edit(stack):
    env, web, launch_daemon = stack

    # 1. Stop the sensor (Automation page), so that only the backfill builds the shards.
    state = web.gql("query($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { sensorState { id status } } } }", s=SENSOR)
    stopped = web.gql("mutation($id: String!) { stopSensor(id: $id) { __typename ... on StopSensorMutationResult { instigationState { status } } } }",
                      id=state["sensorOrError"]["sensorState"]["id"])
    assert stopped["stopSensor"]["instigationState"]["status"] == "STOPPED"

    # 2. Add the shards as partitions and launch a backfill of all four assets over them (asset page).
    for shard in CORPUS:
        added = web.gql("mutation($r: RepositorySelector!, $k: String!) { addDynamicPartition(repositorySelector: $r, partitionsDefName: \"shards\", partitionKey: $k) { __typename } }",
                        r=REPO, k=shard)
        assert added["addDynamicPartition"]["__typename"] == "AddDynamicPartitionSuccess"
    launched = web.gql(
        "mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) { __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }",
        p={"assetSelection": [{"path": a.key.path} for a in SHARD_ASSETS], "partitionNames": sorted(CORPUS), "fromFailure": False},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    daemon = launch_daemon()

    def backfill_status():
        data = web.gql("query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } } }", id=backfill_id)
        status = data["partitionBackfillOrError"]["status"]
        return status if status not in ("REQUESTED",) else None

    assert wait_for("the backfill to finish", backfill_status, daemon.report) == "COMPLETED_SUCCESS", daemon.report()
    runs = web.gql("query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { runs { runId status tags { key value } } } } }",
                   id=backfill_id)["partitionBackfillOrError"]["runs"]
    assert runs and all(r["status"] == "SUCCESS" for r in runs)
    assert any({"key": "rag/launcher", "value": "gpu"} in r["tags"] for r in runs)  # embedding went the GPU route
    for run in runs:  # the same executor as a sensor or CLI run: the four steps in one process
        assert any("Executing steps in process" in m for m in run_messages(web, run["runId"])), run["runId"]
    for asset, check in (("embeddings", "all_chunks_embedded"), ("vector_index", "index_matches_table")):
        executions = web.gql(
            "query($a: AssetKeyInput!, $c: String!) { assetCheckExecutions(assetKey: $a, checkName: $c, limit: 10) {"
            " runId partition evaluation { success partition timestamp description targetMaterialization { runId timestamp } } } }",
            a={"path": [asset]}, c=check,
        )["assetCheckExecutions"]
        # One result per shard, recorded against it, for the materialization of the same run, after it.
        assert sorted(e["partition"] for e in executions) == sorted(CORPUS)
        for e in executions:
            ev = e["evaluation"]
            assert ev["success"] and ev["partition"] == e["partition"] and ev["description"].startswith(f"shard '{e['partition']}'")
            assert ev["targetMaterialization"]["runId"] == e["runId"] and ev["timestamp"] >= ev["targetMaterialization"]["timestamp"]
    assert search_top("pottery glaze fired in a kiln")["doc_id"] == "east/kiln.md"
    assert search_top("dogs pulling a sled over snow")["doc_id"] == "west/sled.md"

    # 3. Start the sensor again and edit a file: it requests a run for that shard only.
    started = web.gql("mutation($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename ... on Sensor { sensorState { status } } } }", s=SENSOR)
    assert started["startSensor"]["sensorState"]["status"] == "RUNNING"
    since = time.time()
    write_file(env.source / "west" / "sled.md", "# Sleds\n\nA toboggan of bent birch wood races down the icy hill.\n")
    runs = wait_for("the sensor's run for west", lambda: [r for r in daemon.runs(since) if r.dagster_run.status.value == "SUCCESS"] or None, daemon.report)
    assert [r.dagster_run.tags["rag/shard"] for r in daemon.runs(since)] == ["west"]
    assert search_top("birch toboggan on an icy hill")["doc_id"] == "west/sled.md"
    status = json.loads(cli("status", "--json"))["shards"]
    assert set(status) == set(CORPUS) and all(row["in_sync"] for row in status.values())

    # 4. The CLI's runs are runs of the project's jobs in the UI, beside the sensor's and the backfill's.
    web.gql("mutation($id: String!) { stopSensor(id: $id) { __typename } }", id=state["sensorOrError"]["sensorState"]["id"])
    wait_until_the_sensor_is_quiet(daemon)
    write_file(env.source / "east" / "kiln.md", "# Kilns\n\nA raku kiln is opened red hot and the pots are pulled out with tongs.\n")
    assert json.loads(cli("sync", "--json"))["shards"]["east"]["status"] == "changed"
    cli("reconcile", "--json")
    for job, shard in (("shard_sync_job", "east"), ("reconcile_job", None)):
        job_runs = web.gql(
            "query($s: PipelineSelector!) { pipelineOrError(params: $s) { ... on Pipeline { runs { runId tags { key value } } } } }",
            s={**REPO, "pipelineName": job},
        )["pipelineOrError"]["runs"]
        mine = [r for r in job_runs if {"key": "rag/sync", "value": "cli"} in r["tags"]]
        assert len(mine) == 1, (job, job_runs)
        if shard:
            assert {"key": "dagster/partition", "value": shard} in mine[0]["tags"]
        origin = web.gql("query($id: ID!) { runOrError(runId: $id) { ... on Run { pipelineName repositoryOrigin { repositoryLocationName repositoryName } } } }",
                         id=mine[0]["runId"])["runOrError"]
        assert origin == {"pipelineName": job, "repositoryOrigin": {"repositoryLocationName": "rag_assets", "repositoryName": "__repository__"}}


def wait_until_the_sensor_is_quiet(daemon) -> None:
    """A tick that began before the sensor was stopped still runs to its end and may request runs (CI once
    saw such a tick pick up the next edit and the CLI sync report the shard busy): wait until the newest
    tick has finished, its runs too, and no new tick appeared over two sensor intervals."""
    def quiet_tick():
        ticks = daemon.ticks()
        if ticks and ticks[0].status == TickStatus.STARTED or any(not r.dagster_run.is_finished for r in daemon.runs()):
            return None
        return ticks[0].tick_id if ticks else -1
    last = wait_for("the sensor's last tick and its runs", quiet_tick, daemon.report)
    for _ in range(30):
        time.sleep(4)
        now = wait_for("the sensor's last tick and its runs", quiet_tick, daemon.report)
        if now == last:
            return
        last = now
    pytest.fail("the sensor kept ticking after it was stopped\n" + daemon.report())


def cli(*args: str) -> str:
    return subprocess.run([str(Path(sys.executable).with_name("rag-assets")), *args], capture_output=True, text=True, check=True).stdout


def run_messages(web: Webserver, run_id: str) -> list[str]:
    events = web.gql("query($id: ID!) { logsForRun(runId: $id, limit: 1000) { ... on EventConnection { events { ... on MessageEvent { message } } } } }",
                     id=run_id)["logsForRun"]["events"]
    return [e.get("message") or "" for e in events]
