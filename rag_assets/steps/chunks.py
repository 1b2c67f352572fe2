"""chunks: which documents keep their chunks, and the rows a split document becomes.

Rule (document by content hash + chunker): a document whose content hash is the `doc_hash` of its
previous chunks, split by the same chunker, keeps those chunks without being split again; they are
copied over with the document's metadata as it is now. The chunker's settings are part of every chunk
hash, so one previous chunk tells whether the chunker changed.

Rule (sparse vector by chunk + encoder): a chunk's BM25 vector is encoded when its document is split, and
copied with the kept chunks; kept chunks are encoded again only when the encoder changed
(rag_assets/sparse.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from rag_assets.chunking import Chunker, chunk_id_for
from rag_assets.sparse import SparseEncoder
from rag_assets.tables import CHUNKS, RAW_DOCUMENTS, Lakehouse

SPARSE_COLUMNS = ("sparse_encoder", "sparse_indices", "sparse_values")


def same_chunker(lake: Lakehouse, shard: str, chunker: Chunker) -> bool:
    """True when the shard's previous chunks were made by `chunker` (False when there are none)."""
    sample = next(lake.partition_batches(CHUNKS, shard, ("text", "chunk_hash")), None)
    return sample is not None and chunker.chunk_hash(sample["text"][0].as_py()) == sample["chunk_hash"][0].as_py()


@dataclass(frozen=True)
class ChunkPlan:
    reusable: pl.DataFrame  # doc_id of every document whose previous chunks are kept
    documents: int  # documents in the shard

    @property
    def to_split(self) -> int:
        return self.documents - self.reusable.height

    def split_batch(self, batch: pa.Table) -> tuple[pl.DataFrame, pa.Table]:
        """(doc_id, metadata of the batch's documents that keep their chunks; the documents to split)."""
        kept = pl.from_arrow(batch.select(["doc_id", "metadata"])).join(self.reusable, on="doc_id", how="semi")
        return kept, batch.filter(pc.invert(pc.is_in(batch["doc_id"], value_set=kept["doc_id"].to_arrow())))


def plan_chunks(documents: pl.DataFrame, previous: pl.DataFrame) -> ChunkPlan:
    """`documents`: doc_id, content_hash now; `previous`: doc_id, doc_hash of the previous chunks (made
    by the same chunker; empty otherwise)."""
    reusable = documents.join(
        previous.unique().rename({"doc_hash": "content_hash"}), on=["doc_id", "content_hash"], how="semi"
    ).select("doc_id")
    return ChunkPlan(reusable, documents.height)


def read_chunk_plan(lake: Lakehouse, shard: str, chunker: Chunker) -> ChunkPlan:
    documents = pl.from_arrow(lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "content_hash")))
    previous = lake.read_partition(CHUNKS, shard, ("doc_id", "doc_hash")) if same_chunker(lake, shard, chunker) \
        else CHUNKS.arrow_schema.empty_table().select(["doc_id", "doc_hash"])
    return plan_chunks(documents, pl.from_arrow(previous))


def with_sparse(rows: pa.Table, encoder: SparseEncoder | None) -> pa.Table:
    """`rows` (with a text column) with SPARSE_COLUMNS encoded from their texts by `encoder` (nulls for none)."""
    n = rows.num_rows
    if encoder is None:
        columns = [pa.nulls(n, CHUNKS.arrow_schema.field(c).type) for c in SPARSE_COLUMNS]
    else:
        columns = [pa.array([encoder.key] * n, pa.string()), *encoder.documents(rows["text"].to_pylist())]
    for name, column in zip(SPARSE_COLUMNS, columns):
        rows = rows.drop_columns([name]) if name in rows.column_names else rows
        rows = rows.append_column(name, column.cast(CHUNKS.arrow_schema.field(name).type))
    return rows


def sparse_is_current(rows: pa.Table, encoder: SparseEncoder | None) -> bool:
    """Whether every row's sparse vector is `encoder`'s (rows from before sparse vectors have none)."""
    found = rows["sparse_encoder"] if "sparse_encoder" in rows.column_names else pa.nulls(rows.num_rows, pa.string())
    if encoder is None:
        return found.null_count == rows.num_rows
    return found.null_count == 0 and pc.all(pc.equal(found, encoder.key)).as_py()


def chunk_rows(shard: str, documents: pa.Table, chunker: Chunker, encoder: SparseEncoder | None) -> pa.Table:
    """The chunks rows of `documents` (doc_id, text, metadata, content_hash), split by `chunker`, with
    their sparse vectors by `encoder`."""
    rows = []
    docs = documents.select(["doc_id", "text", "metadata", "content_hash"]).to_pylist()
    for doc, doc_chunks in zip(docs, chunker.split_many([doc["text"] for doc in docs])):
        for c in doc_chunks:
            rows.append({
                "shard": shard, "doc_id": doc["doc_id"], "chunk_id": chunk_id_for(doc["doc_id"], c.chunk_index),
                "chunk_index": c.chunk_index, "text": c.text, "token_count": c.token_count,
                "char_start": c.char_start, "char_end": c.char_end, "chunk_hash": c.chunk_hash,
                "metadata": doc["metadata"], "doc_hash": doc["content_hash"],
            })
    return with_sparse(pa.Table.from_pylist(rows, CHUNKS.arrow_schema), encoder)


@dataclass
class SparseStats:
    encoded: int = 0  # chunks whose sparse vector was computed (the others were copied)


def kept_chunks(lake: Lakehouse, shard: str, metadata_now: pl.DataFrame, encoder: SparseEncoder | None,
                stats: SparseStats) -> Iterator[pa.Table]:
    """The previous chunks of the documents in `metadata_now` (doc_id, metadata), with that metadata; their
    sparse vectors are encoded again only where the encoder changed."""
    if metadata_now.is_empty():
        return
    for batch in lake.partition_batches(CHUNKS, shard):
        batch = pl.from_arrow(batch).join(metadata_now, on="doc_id", how="inner", suffix="_now", maintain_order="left")
        batch = batch.with_columns(metadata=pl.col("metadata_now")).drop("metadata_now").to_arrow()
        if not sparse_is_current(batch, encoder):
            batch = with_sparse(batch, encoder)
            stats.encoded += batch.num_rows if encoder else 0
        yield batch


def chunk_counts(written: pl.DataFrame) -> dict[str, int]:
    """chunks, tokens and max_chunk_tokens of the written chunks (chunk_id, chunk_hash, token_count)."""
    return {
        "chunks": written.height,
        "tokens": int(written["token_count"].sum() or 0),
        "max_chunk_tokens": int(written["token_count"].max() or 0),
    }
