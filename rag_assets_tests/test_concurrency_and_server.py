"""Concurrent shard runs, and the Qdrant-server path (qdrant-client's in-process mode)."""

import multiprocessing as mp
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa

from rag_assets.defs.assets import SHARD_ASSETS
from rag_assets.index import EdgeIndex, Point, point_id_for
from rag_assets.tables import VECTOR_INDEX, Lakehouse
from rag_assets_tests.conftest import make_env, write_corpus


def _write_points(root: str, shard: str, n: int) -> None:
    rng = np.random.default_rng(abs(hash(shard)) % 2**32)
    index = EdgeIndex(Path(root), "c", batch_size=50)
    for start in range(0, n, 100):  # several short sessions per process, interleaving with the others
        with index.session() as s:
            s.ensure_collection(16)
            s.upsert([Point(point_id_for(f"{shard}-{i}"), rng.random(16), {"shard": shard, "chunk_hash": str(i), "model": "m"})
                      for i in range(start, min(n, start + 100))])


def test_concurrent_processes_share_the_embedded_index(tmp_path):
    shards = [f"s{i}" for i in range(6)]
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_write_points, args=(str(tmp_path), s, 400)) for s in shards]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * len(shards)
    with EdgeIndex(tmp_path, "c").session() as s:
        assert s.count() == 400 * len(shards)
        assert all(s.count(shard) == 400 for shard in shards)


def _commit_partition(props: dict, shard: str) -> None:
    import datetime as dt

    lake = Lakehouse("c", props, "rag")
    now = dt.datetime.now(dt.timezone.utc)
    rows = pa.table({"shard": [shard] * 3, "chunk_id": [f"{shard}{i}" for i in range(3)], "point_id": ["p"] * 3,
                     "chunk_hash": ["h"] * 3, "collection": ["c"] * 3, "synced_at": [now] * 3})
    lake.replace_partition(VECTOR_INDEX, shard, rows)


def commit_shards_at_once(props: dict, n: int) -> Lakehouse:
    """n processes each replace their own shard of one table at the same moment; all must land,
    with exactly one snapshot each (none lost to a conflict, none doubled by a retry)."""
    Lakehouse("c", props, "rag").table(VECTOR_INDEX)
    ctx = mp.get_context("spawn")
    shards = [f"s{i:02d}" for i in range(n)]
    procs = [ctx.Process(target=_commit_partition, args=(props, s)) for s in shards]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0] * n
    lake = Lakehouse("c", props, "rag")
    assert all(lake.read_partition(VECTOR_INDEX, s).num_rows == 3 for s in shards)
    assert len(lake.table(VECTOR_INDEX).history()) == n
    return lake


def test_concurrent_commits_of_different_shards_all_land(tmp_path):
    (tmp_path / "wh").mkdir()
    commit_shards_at_once({"type": "sql", "uri": f"sqlite:///{tmp_path / 'c.db'}", "warehouse": (tmp_path / "wh").as_uri()}, 8)


def test_qdrant_server_path(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch, RAG_QDRANT_URL=":memory:", RAG_QDRANT_COLLECTION="server_test")
    write_corpus(env.source)
    instance, resources = env.instance(), env.resources()
    instance.add_dynamic_partitions("shards", ["beta"])
    result = dg.materialize(SHARD_ASSETS, partition_key="beta", instance=instance, resources=resources)
    assert result.success
    assert all(c.passed for c in result.get_asset_check_evaluations())
    with resources["qdrant"].index().session() as s:
        assert type(s).__name__ == "ServerSession"
        assert s.count("beta") == 3
        vector = resources["model"].embedder().encode(["the moon and the oceans"])[0]
        assert s.search(vector, 1)[0].payload["doc_id"] == "beta/records.jsonl#q2"
    assert not (env.home / "qdrant").exists(), "server mode must not touch the embedded engine"
