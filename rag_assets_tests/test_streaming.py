"""The shard steps stream their partitions in batches: cutting every stream into tiny pieces (documents,
embedding windows, point batches, Parquet row groups, read batches) must give exactly the tables and
index that one piece each gives, also when a text repeats across pieces and when a shard is re-synced."""

import pyarrow.parquet as pq
import pytest

from rag_assets.steps import documents, points, vectors
from rag_assets.sync import run_sync
from rag_assets.tables import CHUNKS, Lakehouse, PartitionWriter
from rag_assets_tests.conftest import make_env
from rag_assets_tests.test_crash import assert_same, state, write_source
from rag_assets_tests.test_incremental import article, write_docs


def corpus(root) -> None:
    write_source(root)
    # The same text under another name in the same shard, and in the other shard: repeated chunk hashes
    # that land in different embedding windows and point batches.
    write_docs(root, "north", {"copy-of-glaciers-0.md": article("glaciers", 0)})
    write_docs(root, "south", {"also-glaciers-0.md": article("glaciers", 0)})


def portable(env) -> dict:
    """`state`, minus what differs between two source folders: their paths and the files' mtimes."""
    out = state(env)
    for name in ("raw_documents", "quarantine"):
        for row in out[name]:
            row["source_uri"] = row["source_uri"].replace(env.source.as_uri(), "")
            row.pop("source_version", None)
    return out


def sync(env) -> dict:
    report = run_sync(env.instance(), env.resources()).as_json()
    assert report["totals"]["failed"] == 0, report
    return report


def test_tiny_batches_give_the_same_tables_and_index(tmp_path, monkeypatch):
    reference = make_env(tmp_path / "whole", monkeypatch)
    corpus(reference.source)
    want_report = sync(reference)
    want = portable(reference)

    env = make_env(tmp_path / "tiny", monkeypatch)
    corpus(env.source)
    monkeypatch.setattr(documents, "DOCUMENT_BATCH", 2)
    monkeypatch.setattr(vectors, "EMBED_WINDOW", 3)
    monkeypatch.setattr(points, "POINT_BATCH", 2)
    monkeypatch.setattr(PartitionWriter, "BUFFER_BYTES", 2048)
    monkeypatch.setattr(Lakehouse, "READ_ROWS", 3)
    report = sync(env)
    for key in ("documents", "chunks", "embedded", "reused", "upserted"):
        assert report["totals"][key] == want_report["totals"][key], key
    assert_same(portable(env), want)

    lake = env.resources()["iceberg"].lakehouse()
    files = [t.file.file_path for t in lake.table(CHUNKS).scan().plan_files()]
    assert len(files) == 2  # one data file per shard partition, however many row groups it was written in
    assert all(pq.ParquetFile(f.removeprefix("file://")).num_row_groups > 1 for f in files)

    # Re-sync after an edit and a removal, still in tiny pieces: only the edit is embedded, and the
    # result equals the reference synced the same way.
    for e in (reference, env):
        (e.source / "north" / "glaciers-1.md").write_text(article("glaciers", 1) + "\nOne more sentence about ice.\n")
        (e.source / "south" / "railways-0.md").unlink()
    again = sync(env)
    assert again["totals"]["embedded"] == 1 and again["totals"]["failed"] == 0
    got = portable(env)
    with monkeypatch.context() as m:
        m.setattr(documents, "DOCUMENT_BATCH", 256)
        for key, value in (("RAG_HOME", reference.home), ("RAG_SOURCE", reference.source), ("DAGSTER_HOME", reference.dagster_home)):
            m.setenv(key, str(value))
        sync(reference)
        assert_same(got, portable(reference))


@pytest.mark.parametrize("batch", [1, 5])
def test_document_batches_do_not_change_raw_documents(tmp_path, monkeypatch, batch):
    env = make_env(tmp_path, monkeypatch)
    corpus(env.source)
    monkeypatch.setattr(documents, "DOCUMENT_BATCH", batch)
    first = sync(env)
    assert first["totals"]["documents"] == 12
    # Unchanged files are copied over from the previous partition, not re-read: nothing is committed.
    (env.source / "north" / "new.md").write_text(article("orchards", 9))
    second = sync(env)
    assert second["shards"]["north"]["status"] == "changed" and second["shards"]["south"]["status"] == "unchanged"
    assert second["totals"]["documents"] == 13 and second["shards"]["north"]["embedded"] > 0
