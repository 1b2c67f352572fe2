"""chunks: which documents keep their chunks, and the rows a split document becomes.

Rule (document by content hash + chunker): a document whose content hash is the `doc_hash` of its
previous chunks, split by the same chunker, keeps those chunks without being split again; they are
copied over with the document's metadata as it is now. The chunker's settings are part of every chunk
hash, so one previous chunk tells whether the chunker changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from rag_assets.chunking import Chunker, chunk_id_for
from rag_assets.tables import CHUNKS, RAW_DOCUMENTS, Lakehouse


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


def chunk_rows(shard: str, documents: pa.Table, chunker: Chunker) -> pa.Table:
    """The chunks rows of `documents` (doc_id, text, metadata, content_hash), split by `chunker`."""
    rows = []
    for doc in documents.select(["doc_id", "text", "metadata", "content_hash"]).to_pylist():
        for c in chunker.split(doc["text"]):
            rows.append({
                "shard": shard, "doc_id": doc["doc_id"], "chunk_id": chunk_id_for(doc["doc_id"], c.chunk_index),
                "chunk_index": c.chunk_index, "text": c.text, "token_count": c.token_count,
                "char_start": c.char_start, "char_end": c.char_end, "chunk_hash": c.chunk_hash,
                "metadata": doc["metadata"], "doc_hash": doc["content_hash"],
            })
    return pa.Table.from_pylist(rows, CHUNKS.arrow_schema)


def kept_chunks(lake: Lakehouse, shard: str, metadata_now: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """The previous chunks of the documents in `metadata_now` (doc_id, metadata), with that metadata."""
    if metadata_now.is_empty():
        return
    for batch in lake.partition_batches(CHUNKS, shard):
        batch = pl.from_arrow(batch).join(metadata_now, on="doc_id", how="inner", suffix="_now", maintain_order="left")
        yield batch.with_columns(metadata=pl.col("metadata_now")).drop("metadata_now")


def chunk_counts(written: pl.DataFrame) -> dict[str, int]:
    """chunks, tokens and max_chunk_tokens of the written chunks (chunk_id, chunk_hash, token_count)."""
    return {
        "chunks": written.height,
        "tokens": int(written["token_count"].sum() or 0),
        "max_chunk_tokens": int(written["token_count"].max() or 0),
    }
