"""The streaming partition writer: one data file per partition rewrite, bounded memory, idempotent commits."""

import datetime as dt
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from rag_assets.tables import EMBEDDINGS, PartitionWriter, RowDigest, Lakehouse

DIM = 384


@pytest.fixture
def lake(tmp_path: Path) -> Lakehouse:
    return Lakehouse("t", {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh"}, "rag")


def vector_rows(shard: str, start: int, n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed + start)
    values = rng.random((n, DIM), dtype=np.float32)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(values.ravel()), DIM).cast(EMBEDDINGS.arrow_schema.field("vector").type)
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    table = pa.table({
        "shard": [shard] * n, "chunk_id": [f"c{i}" for i in range(start, start + n)],
        "chunk_hash": [f"h{i}" for i in range(start, start + n)], "model": ["m"] * n, "dim": pa.array([DIM] * n, pa.int32()),
        "vector": vectors, "embedded_at": pa.array([stamp] * n, pa.timestamp("us", "UTC")),
    })
    return table.take(pa.array(range(n)))  # a copy in Arrow's memory pool (the numpy-backed one is not counted there)


def data_files(lake: Lakehouse) -> list[str]:
    return [t.file.file_path for t in lake.table(EMBEDDINGS).scan().plan_files()]


def parquet_on_disk(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.parquet")}


def test_batches_stream_into_one_file_with_bounded_arrow_memory(lake, tmp_path):
    batch, batches = 1000, 40  # 40 x 1.5 MB of vectors: far more than the writer may hold
    start = pa.total_allocated_bytes()
    highest = 0
    with lake.writer(EMBEDDINGS, "a") as out:
        for b in range(batches):
            out.add(vector_rows("a", b * batch, batch))
            highest = max(highest, pa.total_allocated_bytes() - start)
        result = out.commit()
    assert result.committed and result.rows == batch * batches
    held_limit = 2 * PartitionWriter.BUFFER_BYTES + 4 * batch * DIM * 4  # the buffer, one batch, and the Parquet encoder's pages
    assert highest < held_limit < batch * batches * DIM * 4 / 2, (highest, held_limit)
    assert len(data_files(lake)) == 1
    table = lake.read_partition(EMBEDDINGS, "a")
    assert table.num_rows == batch * batches
    assert sorted(table["chunk_id"].to_pylist()) == sorted(f"c{i}" for i in range(batch * batches))
    # Read back as a stream of row groups, not as one table per file.
    sizes = [b.num_rows for b in lake.partition_batches(EMBEDDINGS, "a", ("chunk_id", "vector"))]
    assert sum(sizes) == batch * batches and len(sizes) > 1
    assert max(sizes) * DIM * 4 <= 2 * PartitionWriter.BUFFER_BYTES
    first = table.filter(pa.compute.equal(table["chunk_id"], "c1234"))
    assert np.allclose(first["vector"][0].as_py(), vector_rows("a", 1000, 1000)["vector"][234].as_py())


def test_same_rows_in_another_order_and_split_commit_nothing(lake, tmp_path):
    rows = pa.concat_tables([vector_rows("a", 0, 300), vector_rows("a", 300, 300)])
    first = lake.replace_partition(EMBEDDINGS, "a", rows)
    files = parquet_on_disk(tmp_path / "wh")
    with lake.writer(EMBEDDINGS, "a") as out:  # reversed, in other batch sizes
        reversed_rows = rows.take(pa.array(range(rows.num_rows - 1, -1, -1)))
        for s in range(0, reversed_rows.num_rows, 77):
            out.add(reversed_rows.slice(s, 77))
        again = out.commit()
    assert first.committed and not again.committed and again.snapshot_id == first.snapshot_id
    assert parquet_on_disk(tmp_path / "wh") == files  # the discarded rewrite left no file behind

    changed = rows.to_pylist()
    changed[123]["vector"] = [v + 1e-6 for v in changed[123]["vector"]]  # one float of one row
    assert lake.replace_partition(EMBEDDINGS, "a", pa.Table.from_pylist(changed, EMBEDDINGS.arrow_schema)).committed


def test_digest_ignores_order_and_batching_but_not_content():
    rows = vector_rows("a", 0, 500)
    whole, pieces, other = RowDigest(), RowDigest(), RowDigest()
    whole.update(rows)
    for s in range(0, 500, 64):
        pieces.update(rows.slice(s, 64).take(pa.array(range(min(64, 500 - s) - 1, -1, -1))))
    other.update(vector_rows("a", 0, 500, seed=1))
    assert whole == pieces and whole.rows == 500
    assert whole != other


def test_a_failed_rewrite_leaves_the_table_and_warehouse_as_they_were(lake, tmp_path):
    lake.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 100))
    lake.replace_partition(EMBEDDINGS, "b", vector_rows("b", 0, 10))
    snapshot = lake.table(EMBEDDINGS).current_snapshot().snapshot_id
    files = parquet_on_disk(tmp_path / "wh")
    with pytest.raises(RuntimeError, match="source failed"):
        with lake.writer(EMBEDDINGS, "a") as out:
            out.add(vector_rows("a", 100, 6000))  # past the buffer: a data file was started
            raise RuntimeError("source failed mid-shard")
    assert lake.table(EMBEDDINGS).current_snapshot().snapshot_id == snapshot
    assert parquet_on_disk(tmp_path / "wh") == files
    assert lake.read_partition(EMBEDDINGS, "a").num_rows == 100


def test_rows_of_another_shard_are_refused(lake):
    with lake.writer(EMBEDDINGS, "a") as out, pytest.raises(ValueError, match="another shard"):
        out.add(vector_rows("b", 0, 3))


def test_rewrite_replaces_only_its_partition_and_empty_rows_delete_it(lake):
    lake.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 50))
    lake.replace_partition(EMBEDDINGS, "b", vector_rows("b", 0, 20))
    lake.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 30, seed=5))
    assert lake.read_partition(EMBEDDINGS, "a").num_rows == 30
    assert lake.read_partition(EMBEDDINGS, "b").num_rows == 20
    assert lake.replace_partition(EMBEDDINGS, "a", EMBEDDINGS.arrow_schema.empty_table()).committed
    assert lake.read_partition(EMBEDDINGS, "a").num_rows == 0
    assert lake.read_partition(EMBEDDINGS, "b").num_rows == 20
    assert len(data_files(lake)) == 1


def test_reads_match_columns_by_field_id_across_schema_evolution_and_filter_rows(lake):
    from pyiceberg.schema import Schema

    from rag_assets.tables import CHUNKS, SHARD_PARTITION

    # A chunks table made before `doc_hash` and the sparse vectors existed, with one data file written without them.
    old_schema = Schema(*[f for f in CHUNKS.schema.fields if f.name != "doc_hash" and not f.name.startswith("sparse_")])
    lake.catalog.create_namespace("rag")
    old = lake.catalog.create_table("rag.chunks", schema=old_schema, partition_spec=SHARD_PARTITION)
    rows = [{"shard": "a", "doc_id": f"d{i}", "chunk_id": f"c{i}", "chunk_index": 0, "text": f"text {i}", "token_count": 2,
             "char_start": 0, "char_end": 6, "chunk_hash": f"h{i}", "metadata": "{}"} for i in range(10)]
    old.append(pa.Table.from_pylist(rows, old_schema.as_arrow()))

    read = lake.read_partition(CHUNKS, "a")  # the table gains the columns on load; the old file reads them as nulls
    assert read.num_rows == 10 and read["doc_hash"].null_count == 10 and read["sparse_indices"].null_count == 10
    assert sorted(read["text"].to_pylist()) == sorted(r["text"] for r in rows)
    picked = pa.concat_tables(lake.where_in_batches(CHUNKS, "chunk_hash", ["h3", "h7", "nope"], ("chunk_id", "text")))
    assert sorted(picked["chunk_id"].to_pylist()) == ["c3", "c7"] and picked.column_names == ["chunk_id", "text"]


def test_reads_files_added_without_field_ids_by_column_name(lake, tmp_path):
    import pyarrow.parquet as pq

    from rag_assets.tables import VECTOR_INDEX

    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    rows = pa.Table.from_pylist([{"shard": "a", "chunk_id": f"c{i}", "point_id": f"p{i}", "chunk_hash": f"h{i}", "collection": "x",
                                  "synced_at": stamp} for i in range(5)], VECTOR_INDEX.arrow_schema)
    path = tmp_path / "imported.parquet"
    pq.write_table(rows, path)  # plain Parquet, as another tool writes it: no Iceberg field ids
    lake.table(VECTOR_INDEX).add_files([str(path)])
    read = lake.read_partition(VECTOR_INDEX, "a", ("chunk_id", "chunk_hash"))
    assert sorted(read["chunk_hash"].to_pylist()) == [f"h{i}" for i in range(5)]


def test_row_counts_come_from_the_manifests_and_follow_rewrites_and_deletes(lake):
    assert lake.row_counts(EMBEDDINGS) == {}
    lake.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 50))
    lake.replace_partition(EMBEDDINGS, "b", vector_rows("b", 0, 20))
    lake.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 30, seed=5))
    assert lake.row_counts(EMBEDDINGS) == {"a": 30, "b": 20}
    lake.delete_partition(EMBEDDINGS, "b")
    assert lake.row_counts(EMBEDDINGS) == {"a": 30}


def test_a_local_catalog_and_warehouse_are_created_on_first_use(tmp_path):
    home = tmp_path / "not yet" / "rag"
    lake = Lakehouse("t2", {"type": "sql", "uri": f"sqlite:///{home}/catalog.db", "warehouse": f"file://{home}/wh"}, "rag")
    lake.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 3))
    assert (home / "catalog.db").is_file() and any((home / "wh").rglob("*.parquet"))


def test_the_cached_transaction_metadata_equals_pyicebergs_own(lake):
    """`_Transaction.table_metadata` skips pyiceberg's deep copy and caches per state: it must build the
    very metadata pyiceberg's `update_table_metadata` builds, before and after updates are staged."""
    from pyiceberg.expressions import EqualTo
    from pyiceberg.table.update import update_table_metadata

    from rag_assets.tables import _Transaction

    lake.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 5))
    lake.replace_partition(EMBEDDINGS, "b", vector_rows("b", 0, 5))
    table = lake.table(EMBEDDINGS)
    tx = _Transaction(table)

    def same() -> None:
        ours, theirs = tx.table_metadata.model_dump(), update_table_metadata(table.metadata, tx._updates).model_dump()
        for dump in (ours, theirs):  # the one field each build stamps with its own clock
            dump.pop("last-updated-ms", None), dump.pop("last_updated_ms", None)
        assert ours == theirs

    same()
    assert tx.table_metadata is tx.table_metadata  # built once per state
    tx.delete(EqualTo("shard", "a"))
    same()
    tx.commit_transaction()
    assert lake.row_counts(EMBEDDINGS) == {"b": 5}


def test_the_sql_catalog_commits_pyicebergs_metadata_and_sees_other_writers(tmp_path):
    """`CachingSqlCatalog` (the SQL catalog without the deep copy and with parsed metadata kept per
    location) commits the metadata pyiceberg's own `update_table_metadata` builds, metadata log included,
    and a commit made through another catalog (another process) is what the next load returns."""
    from pyiceberg.table.update import update_table_metadata

    from rag_assets.tables import CachingSqlCatalog, _catalog

    props = {"type": "sql", "uri": f"sqlite:///{tmp_path}/catalog.db", "warehouse": f"file://{tmp_path}/wh"}
    ours = Lakehouse("one", props, "rag")
    assert isinstance(ours.catalog, CachingSqlCatalog)
    ours.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 3))
    before = ours.table(EMBEDDINGS)

    captured = {}
    original = CachingSqlCatalog._update_and_stage_table

    def capture(self, current, ident, requirements, updates):
        staged = original(self, current, ident, requirements, updates)
        captured["expected"] = update_table_metadata(current.metadata, updates, metadata_location=current.metadata_location)
        captured["ours"] = staged.metadata
        return staged

    CachingSqlCatalog._update_and_stage_table = capture
    try:
        ours.replace_partition(EMBEDDINGS, "a", vector_rows("a", 0, 4))
    finally:
        CachingSqlCatalog._update_and_stage_table = original
    dumps = [captured[k].model_dump() for k in ("ours", "expected")]
    for dump in dumps:  # the one field each build stamps with its own clock
        dump.pop("last-updated-ms", None), dump.pop("last_updated_ms", None)
    assert dumps[0] == dumps[1] and captured["ours"].metadata_log[-1].metadata_file == before.metadata_location

    # Another process: its own catalog client on the same database and warehouse.
    _catalog.cache_clear()
    theirs = Lakehouse("one", props, "rag")
    assert theirs.catalog is not ours.catalog
    theirs.replace_partition(EMBEDDINGS, "b", vector_rows("b", 0, 2))
    assert ours.row_counts(EMBEDDINGS) == {"a": 4, "b": 2}
    assert ours.table(EMBEDDINGS).metadata_location == theirs.table(EMBEDDINGS).metadata_location
