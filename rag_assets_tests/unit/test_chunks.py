"""chunks' rules: which documents keep their chunks, and the rows a split document becomes."""

import pyarrow as pa
import polars as pl
import pytest

from rag_assets.chunking import Chunker, chunk_id_for
from rag_assets.config import default_model
from rag_assets.embedding import resolve_model
from rag_assets.sparse import SparseEncoder
from rag_assets.steps.chunks import chunk_counts, chunk_rows, plan_chunks, sparse_is_current, with_sparse
from rag_assets.tables import CHUNKS


def test_a_document_keeps_its_chunks_only_while_its_content_hash_is_their_doc_hash():
    documents = pl.DataFrame({"doc_id": ["same", "edited", "new"], "content_hash": ["h1", "h2-new", "h3"]})
    previous = pl.DataFrame({"doc_id": ["same", "same", "edited", "gone"], "doc_hash": ["h1", "h1", "h2", "h4"]})  # one row per chunk
    plan = plan_chunks(documents, previous)
    assert plan.reusable["doc_id"].to_list() == ["same"]
    assert (plan.documents, plan.to_split) == (3, 2)


def test_no_previous_chunks_of_this_chunker_means_every_document_is_split():
    documents = pl.DataFrame({"doc_id": ["a"], "content_hash": ["h"]})
    plan = plan_chunks(documents, pl.DataFrame(schema={"doc_id": pl.String, "doc_hash": pl.String}))
    assert plan.reusable.is_empty() and plan.to_split == 1


def test_split_batch_separates_kept_documents_with_their_metadata_now():
    plan = plan_chunks(pl.DataFrame({"doc_id": ["a", "b"], "content_hash": ["1", "2"]}), pl.DataFrame({"doc_id": ["a"], "doc_hash": ["1"]}))
    batch = pa.table({"doc_id": ["a", "b"], "text": ["x", "y"], "metadata": ['{"v": 2}', "{}"], "content_hash": ["1", "2"]})
    kept, to_split = plan.split_batch(batch)
    assert kept.rows() == [("a", '{"v": 2}')]
    assert to_split["doc_id"].to_pylist() == ["b"]


@pytest.fixture(scope="module")
def chunker() -> Chunker:
    return Chunker(resolve_model(default_model()), 32, 4)  # the model's tokenizer only: no weights are loaded


def test_chunk_rows_carry_ids_offsets_tokens_and_the_document_hash(chunker):
    text = " ".join(f"Sentence number {i} talks about lighthouses and tides." for i in range(12))
    docs = pa.table({"doc_id": ["d"], "text": [text], "metadata": ["{}"], "content_hash": ["h"]})
    rows = chunk_rows("s", docs, chunker, SparseEncoder())
    assert rows.schema == CHUNKS.arrow_schema and rows.num_rows > 1
    for r in rows.to_pylist():
        assert r["chunk_id"] == chunk_id_for("d", r["chunk_index"]) and r["doc_hash"] == "h" and r["shard"] == "s"
        assert text[r["char_start"]:r["char_end"]] == r["text"] and 0 < r["token_count"] <= chunker.capacity
        assert r["chunk_hash"] == chunker.chunk_hash(r["text"])
        assert r["sparse_encoder"] == "bm25-v1:english" and len(r["sparse_indices"]) == len(r["sparse_values"]) > 0
    assert sparse_is_current(rows, SparseEncoder()) and not sparse_is_current(rows, None)
    dense_only = chunk_rows("s", docs, chunker, None)
    assert dense_only["sparse_indices"].null_count == dense_only.num_rows and sparse_is_current(dense_only, None)
    assert with_sparse(dense_only, SparseEncoder()).to_pylist() == rows.to_pylist()  # an encoder change re-encodes alike
    counts = chunk_counts(pl.from_arrow(rows.select(["chunk_id", "chunk_hash", "token_count"])))
    assert counts["chunks"] == rows.num_rows and counts["tokens"] == sum(rows["token_count"].to_pylist())
    assert chunk_counts(pl.DataFrame(schema={"chunk_id": pl.String, "chunk_hash": pl.String, "token_count": pl.Int32})) == \
        {"chunks": 0, "tokens": 0, "max_chunk_tokens": 0}
