"""`rag-assets sync` with RAG_SYNC_WORKERS=2: the shard runs execute in forked worker processes, recorded
in the same instance, with the same results as a sync that runs them in its own process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from rag_assets.runs import PID_TAG
from rag_assets.sync import run_sync
from rag_assets.tables import VECTOR_STORE
from rag_assets_tests.conftest import make_env, write_corpus
from rag_assets_tests.test_crash import assert_same, state

CLI = str(Path(sys.executable).with_name("rag-assets"))


def cli_sync(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "sync", *args], env=dict(os.environ), capture_output=True, text=True, timeout=600)


def edit(source: Path) -> None:
    (source / "alpha" / "orbit.md").write_text("# Orbits\n\nA moon's orbit bends around its planet, slowly.\n")
    (source / "gamma" / "extra.md").write_text("# Tides\n\nTides follow the moon across the sea.\n")


def test_workers_give_what_a_sync_in_one_process_gives(tmp_path, monkeypatch):
    source = tmp_path / "source"  # one source for both homes: the same URIs and file versions
    write_corpus(source)
    workers = make_env(tmp_path / "workers", monkeypatch, RAG_SOURCE=str(source), RAG_SYNC_WORKERS="2")
    serial = make_env(tmp_path / "serial", monkeypatch, RAG_SOURCE=str(source))
    assert run_sync(serial.instance(), serial.resources()).as_json()["totals"]["failed"] == 0

    use(workers, monkeypatch, RAG_SYNC_WORKERS="2")
    first = cli_sync()  # not --json: the shard bar is drawn from the workers' results
    assert first.returncode == 0, first.stderr[-3000:]
    assert "3/3" in first.stderr
    edit(source)
    second = cli_sync("--json")
    assert second.returncode == 0, second.stderr[-3000:]
    report = json.loads(second.stdout)
    assert [s for s, row in report["shards"].items() if row["status"] == "changed"] == ["alpha", "gamma"]
    assert report["shards"]["beta"]["status"] == "unchanged" and report["totals"]["embedded"] > 0
    runs = dg.DagsterInstance.get().get_runs(dg.RunsFilter(job_name="shard_sync_job"))
    assert len(runs) == 5 and all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    first_sync = {r.tags[PID_TAG] for r in runs[2:]}  # newest first: the 3 runs of the first sync
    assert len(first_sync) == 2, first_sync  # its 3 shards ran in 2 workers, each run naming its worker
    got = state_of(workers)

    use(serial, monkeypatch, RAG_SYNC_WORKERS="1")
    assert run_sync(serial.instance(), serial.resources()).as_json()["totals"]["failed"] == 0
    assert_same(got, state_of(serial))


def use(env, monkeypatch, **extra: str) -> None:
    """Point this process (and the CLI it starts) at `env`'s home and Dagster instance."""
    for key, value in {"RAG_HOME": str(env.home), "DAGSTER_HOME": str(env.dagster_home), **extra}.items():
        monkeypatch.setenv(key, value)


def state_of(env) -> dict:
    """test_crash's comparable state of this corpus's shards, with one vector store row per hash: two
    workers may both embed a text new to both their shards, and the store keeps such duplicates until
    it merges them (vector_store.py); every lookup finds the same vector either way."""
    got = state(env, shards=("alpha", "beta", "gamma"))
    unique = {(r["model"], r["chunk_hash"]): r for r in got[VECTOR_STORE.name]}
    got[VECTOR_STORE.name] = [unique[k] for k in sorted(unique)]
    return got
