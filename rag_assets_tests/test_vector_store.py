"""The (model, chunk_hash) -> vector store: lookups read only what can hold the hashes, files stay few,
merges never lose a vector even when two processes merge at once, and unreferenced vectors go."""

import datetime as dt
import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rag_assets.steps.vectors import new_vectors
from rag_assets.tables import EMBEDDINGS, VECTOR_STORE, Lakehouse, _catalog
from rag_assets.vector_store import FANOUT, SEEDED, VectorStore, tier

STAMP = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
MODEL = "test-model@1"


def sha(i) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def vectors(keys, dim: int = 8) -> pa.Table:
    rng = np.random.default_rng(len(keys))
    return new_vectors([sha(k) for k in keys], rng.random((len(keys), dim), dtype=np.float32), STAMP)


def props(tmp_path) -> dict:
    return {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh"}


@pytest.fixture
def store(tmp_path) -> VectorStore:
    return VectorStore(Lakehouse("vs", props(tmp_path), "rag"))


def found(store: VectorStore, keys) -> dict[str, list[float]]:
    hits = store.lookup(MODEL, [sha(k) for k in keys])
    return {r["chunk_hash"]: r["vector"] for t in store.vectors(hits) for r in t.to_pylist()}


def test_appended_vectors_are_found_and_files_stay_few(store):
    added = {}
    for run in range(40):  # forty runs of 50 new vectors each, as forty new shards would append
        batch = vectors(range(run * 50, run * 50 + 50))
        added.update(zip(batch["chunk_hash"].to_pylist(), batch["vector"].to_pylist()))
        store.add(MODEL, [batch])
    files = store.files(MODEL)
    per_tier = {}
    for f in files:
        per_tier[tier(f.record_count)] = per_tier.get(tier(f.record_count), 0) + 1
    assert all(n < FANOUT for n in per_tier.values()) and len(files) < 2 * FANOUT  # 40 appends, few files
    assert sum(f.record_count for f in files) == 2000  # merges keep every vector once
    got = found(store, list(range(0, 2000, 7)) + ["never embedded"])
    assert got == {h: v for h, v in added.items() if h in {sha(k) for k in range(0, 2000, 7)}}
    for f in files:  # each file sorted by hash, so row groups and files prune by their bounds
        hashes = pq.read_table(f.file_path.removeprefix("file://"), columns=["chunk_hash"])["chunk_hash"].to_pylist()
        assert hashes == sorted(hashes) and len(set(hashes)) == len(hashes)


def test_a_lookup_opens_only_files_and_row_groups_that_can_hold_the_hashes(store):
    # Files with disjoint hash ranges (as after merges): hashes 0..., 4..., 8..., c... by leading digit.
    keys = [k for k in range(4000)]
    by_prefix = {}
    for k in keys:
        by_prefix.setdefault(sha(k)[0], []).append(k)
    for prefix in "048c":
        store.add(MODEL, [vectors(by_prefix[prefix])])
    target = by_prefix["8"][:3]
    hits = store.lookup(MODEL, [sha(k) for k in target])
    assert hits.files_read == 1 and sorted(hits.hashes["chunk_hash"].to_list()) == sorted(sha(k) for k in target)
    assert store.lookup(MODEL, ["f" * 64]).files_read == 0  # beyond every file's bounds: nothing opened
    assert store.lookup("another-model@1", [sha(k) for k in target]).hashes.is_empty()


def test_two_processes_merging_the_same_files_lose_and_duplicate_nothing(tmp_path):
    first = VectorStore(Lakehouse("vs", props(tmp_path), "rag"))
    for run in range(FANOUT - 1):
        first.add(MODEL, [vectors(range(run * 10, run * 10 + 10))])
    _catalog.cache_clear()  # the second process: its own catalog client
    second = VectorStore(Lakehouse("vs", props(tmp_path), "rag"))
    stale = second.table()
    inputs = second.files(MODEL, stale)
    first.add(MODEL, [vectors(range(70, 80))])  # completes the tier: the first process merges
    assert len(first.files(MODEL)) == 1
    assert second._rewrite(stale, MODEL, inputs, keep=None) is False  # its inputs are gone: skipped
    files = first.files(MODEL)
    assert len(files) == 1 and files[0].record_count == 80
    assert len(found(first, range(80))) == 80
    leftovers = [p for p in (tmp_path / "wh").rglob("*.parquet") if f"file://{p}" not in {f.file_path for f in files}]
    assert all(p.stat().st_size for p in leftovers)  # replaced inputs wait for expiry; the loser's output is gone
    assert len(leftovers) == FANOUT


def test_vectors_no_shard_references_are_collected(tmp_path):
    lake = Lakehouse("vs", props(tmp_path), "rag")
    rows = []
    for shard, keys in (("a", range(0, 30)), ("b", range(30, 60))):
        v = vectors(keys)
        rows.append(v.append_column("shard", pa.array([shard] * v.num_rows)).append_column("chunk_id", pa.array([f"{shard}{k}" for k in keys]))
                    .append_column("model", pa.array([MODEL] * v.num_rows)))
    for shard, r in zip("ab", rows):
        lake.replace_partition(EMBEDDINGS, shard, r)
    store = VectorStore(lake)  # made now, after the embeddings: seeded from them
    assert store.table().properties[SEEDED] == "true" and len(found(store, range(60))) == 60
    lake.delete_partition(EMBEDDINGS, "a")
    assert store.collect_garbage() == {"dropped_vectors": 30, "rewritten_files": 1}
    assert set(found(store, range(60))) == {sha(k) for k in range(30, 60)}
    assert store.collect_garbage() == {"dropped_vectors": 0, "rewritten_files": 0}  # idempotent
    assert VECTOR_STORE.name in {t[-1] for t in lake.catalog.list_tables("rag")}
