"""embeddings' rules: where each vector comes from, and the rows vectors become."""

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa

from rag_assets.steps.vectors import VECTOR_COLUMNS, VectorRows, first_rows, new_vectors, plan_vectors
from rag_assets.tables import EMBEDDINGS
from rag_assets.vector_store import Hits

STAMP = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)


def chunks(*hashes: str) -> pl.DataFrame:
    return pl.DataFrame({"chunk_id": [f"c{i}" for i in range(len(hashes))], "chunk_hash": list(hashes),
                         "token_count": [10 * (i + 1) for i in range(len(hashes))]}, schema_overrides={"token_count": pl.Int32})


def hashes(*values: str) -> pl.DataFrame:
    return pl.DataFrame({"chunk_hash": list(values)}, schema={"chunk_hash": pl.String})


def store_holding(*held: str):
    """A store lookup (`VectorStore.lookup`) answering from `held`, recording what it was asked."""
    asked = []

    def lookup(wanted):
        asked.append(sorted(wanted))
        return Hits(hashes=pl.DataFrame({"chunk_hash": sorted(set(wanted) & set(held))}, schema={"chunk_hash": pl.String}))

    lookup.asked = asked
    return lookup


def test_own_vectors_first_then_the_store_then_the_model():
    lookup = store_holding("shared", "own", "unrelated")
    plan = plan_vectors(chunks("own", "shared", "fresh", "fresh"), hashes("own", "gone"), lookup)
    assert plan.own["chunk_hash"].to_list() == ["own"]
    assert lookup.asked == [["fresh", "shared"]]  # the store is asked only for what the shard does not hold
    assert plan.from_store.hashes["chunk_hash"].to_list() == ["shared"]
    assert plan.to_embed["chunk_hash"].to_list() == ["fresh"]  # a repeated text is embedded once
    assert plan.tokens == 30  # the first chunk's count for a repeated hash


def test_the_store_is_not_asked_when_the_shard_holds_every_vector():
    def never(wanted):
        raise AssertionError("the store was asked")

    plan = plan_vectors(chunks("a", "b"), hashes("a", "b"), never)
    assert plan.to_embed.is_empty() and plan.from_store.hashes.is_empty() and plan.tokens == 0


def test_first_rows_picks_the_first_row_of_each_wanted_hash_in_order():
    rows = pa.table({"chunk_hash": ["b", "a", "b", "c", "a"]})
    assert first_rows(rows, hashes("a", "b")).rows() == [("b", 0), ("a", 1)]


def test_new_vectors_are_float32_rows_of_the_table_type():
    vectors = np.arange(6, dtype=np.float64).reshape(2, 3)
    table = new_vectors(["h1", "h2"], vectors, STAMP)
    assert table.column_names == list(VECTOR_COLUMNS)
    assert table["vector"].type == EMBEDDINGS.arrow_schema.field("vector").type
    assert table["vector"].to_pylist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]] and table["dim"].to_pylist() == [3, 3]


class Collected:
    """Stands in for a PartitionWriter: keeps what it is given."""

    def __init__(self):
        self.tables: list[pa.Table] = []

    def add(self, rows: pa.Table) -> None:
        self.tables.append(rows)


def test_vector_rows_give_every_chunk_the_first_vector_found_for_its_hash_once():
    out = Collected()
    rows = VectorRows(out, "s", "m@1", chunks("h1", "h2", "h1"))
    rows.add(new_vectors(["h1", "x"], np.ones((2, 2)), STAMP))
    rows.add(new_vectors(["h1", "h2"], np.zeros((2, 2)), STAMP))  # h1 again: ignored, already written
    written = pa.concat_tables(out.tables)
    got = sorted(zip(written["chunk_id"].to_pylist(), written["chunk_hash"].to_pylist(), written["vector"].to_pylist()))
    assert got == [("c0", "h1", [1.0, 1.0]), ("c1", "h2", [0.0, 0.0]), ("c2", "h1", [1.0, 1.0])]
    assert set(written["shard"].to_pylist()) == {"s"} and set(written["model"].to_pylist()) == {"m@1"}
    assert rows.pending.is_empty()
