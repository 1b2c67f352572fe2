"""`rag-assets sync` with RAG_SYNC_WORKERS=2: edited shards run in forked worker processes, recorded in
the same instance, with the same tables and index as a sync that runs every shard in its own process; a
worker killed mid-run fails its shards, not the sync, and so does the sync's model process
(model_process.py) killed mid-call; the next sync catches up."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from rag_assets.model_process import DIED
from rag_assets.runs import PID_TAG
from rag_assets.sync import run_sync
from rag_assets.tables import VECTOR_STORE
from rag_assets_tests.conftest import make_env, write_corpus
from rag_assets_tests.test_crash import assert_same, state

CLI = str(Path(sys.executable).with_name("rag-assets"))
SHARDS = ("alpha", "beta", "gamma")


def cli_sync(*args: str, failpoint: str = "") -> tuple[int, subprocess.CompletedProcess]:
    """The CLI's pid and its result."""
    env = {**os.environ, "RAG_FAILPOINT": failpoint} if failpoint else dict(os.environ)
    proc = subprocess.Popen([CLI, "sync", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate(timeout=600)
    return proc.pid, subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def edit(source: Path) -> None:
    (source / "alpha" / "orbit.md").write_text("# Orbits\n\nA moon's orbit bends around its planet, slowly.\n")
    (source / "gamma" / "extra.md").write_text("# Tides\n\nTides follow the moon across the sea.\n")


def test_workers_give_what_a_sync_in_one_process_gives_even_after_one_is_killed(tmp_path, monkeypatch):
    source = tmp_path / "source"  # one source for both homes: the same URIs and file versions
    write_corpus(source)
    workers = make_env(tmp_path / "workers", monkeypatch, RAG_SOURCE=str(source))
    serial = make_env(tmp_path / "serial", monkeypatch, RAG_SOURCE=str(source))
    assert run_sync(serial.instance(), serial.resources()).as_json()["totals"]["failed"] == 0

    use(workers, monkeypatch, RAG_SYNC_WORKERS="2")
    cli, first = cli_sync()  # new shards: built one at a time in the CLI's process; not --json: the bar
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3/3" in first.stderr
    assert {r.tags[PID_TAG] for r in shard_runs()} == {str(cli)}

    edit(source)
    _, killed = cli_sync("--json", failpoint="embed.batch:1")  # each worker dies at its first model call
    assert killed.returncode == 1, killed.stderr[-3000:]  # a report, not a killed CLI
    shards = json.loads(killed.stdout)["shards"]
    assert {s for s, row in shards.items() if row["status"] == "failed"} == {"alpha", "gamma"}, shards
    assert all("worker process died" in shards[s]["error"] for s in ("alpha", "gamma"))

    cli, second = cli_sync("--json")
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout)
    assert [s for s, row in report["shards"].items() if row["status"] == "changed"] == ["alpha", "gamma"]
    assert report["shards"]["beta"]["status"] == "unchanged" and report["totals"]["embedded"] > 0
    runs = shard_runs()[:2]  # newest first: this sync's two runs, each naming the worker that executed it
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    assert str(cli) not in {r.tags[PID_TAG] for r in runs}

    use(serial, monkeypatch, RAG_SYNC_WORKERS="1")  # the serial home syncs each version of the source too
    assert run_sync(serial.instance(), serial.resources()).as_json()["totals"]["failed"] == 0
    use(workers, monkeypatch, RAG_SYNC_WORKERS="2")

    # The sync's model process dies at its first batch: the shards waiting for it fail, the sync reports.
    (source / "alpha" / "orbit.md").write_text("# Orbits\n\nA comet's orbit is long and thin.\n")
    (source / "beta" / "tides.md").write_text("# Spring tides\n\nSpring tides come with new and full moons.\n")
    _, killed = cli_sync("--json", failpoint="model_process.batch:1")
    assert killed.returncode == 1, killed.stderr[-3000:]
    shards = json.loads(killed.stdout)["shards"]
    assert {s for s, row in shards.items() if row["status"] == "failed"} == {"alpha", "beta"}, shards
    assert all(shards[s]["error"].endswith(f"ModelProcessDied: {DIED}") for s in ("alpha", "beta")), shards
    third = cli_sync("--json")[1]
    assert third.returncode == 0, third.stderr[-3000:]
    assert [s for s, row in json.loads(third.stdout)["shards"].items() if row["status"] == "changed"] == ["alpha", "beta"]
    got = state_of(workers)

    # Nothing to embed: the model process never loads the model (it would trace it into this empty cache).
    monkeypatch.setenv("RAG_MODEL_CACHE", str(tmp_path / "empty-cache"))
    idle = cli_sync("--json")[1]
    assert idle.returncode == 0 and json.loads(idle.stdout)["totals"]["embedded"] == 0, idle.stderr[-3000:]
    assert not (tmp_path / "empty-cache").exists()

    use(serial, monkeypatch, RAG_SYNC_WORKERS="1")
    assert run_sync(serial.instance(), serial.resources()).as_json()["totals"]["failed"] == 0
    assert_same(got, state_of(serial))


def shard_runs() -> list:
    return dg.DagsterInstance.get().get_runs(dg.RunsFilter(job_name="shard_sync_job"))


def use(env, monkeypatch, **extra: str) -> None:
    """Point this process (and the CLI it starts) at `env`'s home and Dagster instance."""
    for key, value in {"RAG_HOME": str(env.home), "DAGSTER_HOME": str(env.dagster_home), **extra}.items():
        monkeypatch.setenv(key, value)


def state_of(env) -> dict:
    """test_crash's comparable state of this corpus's shards, with one vector store row per hash: two
    workers may both embed a text new to both their shards, and the store keeps such duplicates until
    it merges them (vector_store.py); every lookup finds the same vector either way."""
    got = state(env, shards=SHARDS)
    unique = {(r["model"], r["chunk_hash"]): r for r in got[VECTOR_STORE.name]}
    got[VECTOR_STORE.name] = [unique[k] for k in sorted(unique)]
    return got
