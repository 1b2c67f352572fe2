"""Crash safety: a sync killed with SIGKILL in the middle of embedding, or in the middle of the index
upsert, then run again, leaves exactly the tables and index of a sync that was never interrupted."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rag_assets.sync import run_sync
from rag_assets.tables import EMBEDDINGS, MAINTAINED_TABLES, RAW_DOCUMENTS, VECTOR_INDEX
from rag_assets_tests.conftest import make_env
from rag_assets_tests.test_incremental import article, write_docs

TIME_COLUMNS = ("ingested_at", "embedded_at", "synced_at")
SMALL_BATCHES = {"RAG_EMBED_BATCH_SIZE": "4", "RAG_QDRANT_BATCH_SIZE": "8"}  # many batches to die between


def write_source(root: Path) -> None:
    for shard, topics in (("north", ["glaciers", "orchards", "lighthouses"]), ("south", ["railways", "beekeeping"])):
        write_docs(root, shard, {f"{t}-{n}.md": article(t, n) for t in topics for n in range(2)})


def sync(failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAG_FAILPOINT": failpoint} if failpoint else {k: v for k, v in os.environ.items() if k != "RAG_FAILPOINT"}
    cli = Path(sys.executable).with_name("rag-assets")
    return subprocess.run([str(cli), "sync", "--json"], env=env, capture_output=True, text=True, timeout=600)


def state(env, shards=("north", "south")) -> dict:
    """Every table's rows (timestamps aside) and every live point, in a comparable form."""
    lake = env.resources()["iceberg"].lakehouse()
    out: dict = {}
    for spec in MAINTAINED_TABLES:  # the shard tables and the vector store
        rows = lake.table(spec).scan().to_arrow().drop_columns([c for c in TIME_COLUMNS if c in set_of(spec)]).to_pylist()
        out[spec.name] = sorted(rows, key=lambda r: json.dumps({k: v for k, v in r.items() if k != "vector"}, sort_keys=True))
    with env.resources()["qdrant"].index().session() as session:
        out["points"] = {s: dict(session.shard_points(s).iter_rows()) for s in shards}
        out["point_count"] = session.count()
    return out


def set_of(spec) -> set[str]:
    return set(spec.arrow_schema.names)


def assert_same(got: dict, want: dict) -> None:
    for name in [spec.name for spec in MAINTAINED_TABLES]:
        strip = lambda rows: [{k: v for k, v in r.items() if k != "vector"} for r in rows]  # noqa: E731
        assert strip(got[name]) == strip(want[name]), name
    np.testing.assert_allclose(
        np.array([r["vector"] for r in got["embeddings"]]), np.array([r["vector"] for r in want["embeddings"]]), atol=1e-5
    )
    assert got["points"] == want["points"]
    assert got["point_count"] == sum(len(p) for p in want["points"].values()) == len(want["vector_index"])  # no duplicates


@pytest.fixture(scope="module")
def clean_state(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(tmp_path_factory.mktemp("clean"), mp, **SMALL_BATCHES)
        write_source(env.source)
        assert run_sync(env.instance(), env.resources()).as_json()["totals"]["failed"] == 0  # in-process: the same runs
        yield state(env), env.source


@pytest.mark.parametrize("failpoint", ["embed.batch:3", "index.upsert_batch:2"])
def test_sigkill_mid_step_then_rerun_equals_a_clean_sync(failpoint, clean_state, tmp_path, monkeypatch):
    clean, source = clean_state
    # The same files (same URIs and mtimes); the shards run in the CLI's own process, so the kill kills the sync.
    env = make_env(tmp_path, monkeypatch, RAG_SOURCE=str(source), RAG_SYNC_WORKERS="1", **SMALL_BATCHES)
    killed = sync(failpoint)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    # The kill landed inside the step: its Iceberg commit never happened, the earlier steps' did.
    lake = env.resources()["iceberg"].lakehouse()
    assert lake.read_partition(RAW_DOCUMENTS, "north").num_rows == 6
    if failpoint.startswith("embed"):
        assert lake.read_partition(EMBEDDINGS, "north").num_rows == 0
    else:
        assert lake.read_partition(EMBEDDINGS, "north").num_rows > 16
        assert lake.read_partition(VECTOR_INDEX, "north").num_rows == 0
        with env.resources()["qdrant"].index().session() as session:
            assert session.count("north") == 16  # two batches of 8 reached the engine's WAL before the kill

    rerun = sync()
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    report = json.loads(rerun.stdout)
    assert report["totals"]["failed"] == 0
    assert_same(state(env), clean)

