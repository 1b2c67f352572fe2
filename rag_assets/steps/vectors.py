"""embeddings: which vectors are reused and which chunks go through the model, and the rows they become.

Rule (vector by chunk_hash + model): nothing is embedded twice for the same (chunk_hash, model). A chunk
takes its vector from, in this order, the shard's own previous rows, the vector store (every vector any
shard embedded, keyed by hash: rag_assets/vector_store.py), and only then the model, whose new vectors
go to the store before the shard's rows are committed. A text can repeat, so several chunks can share
one hash and one vector.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from pyiceberg.expressions import EqualTo

from rag_assets import progress
from rag_assets.embedding import TextBatcher
from rag_assets.faults import failpoint
from rag_assets.tables import CHUNKS, EMBEDDINGS, Lakehouse, PartitionWriter
from rag_assets.vector_store import STORE_COLUMNS, Hits, VectorStore

# Chunk texts sent to the model per call: ~4 MB of text and 6 MB of 384-d vectors on the CPU. A GPU gets
# 8x more per call, so that its one host sync per call and the table writes between calls stay rare.
EMBED_WINDOW = 4096
VECTOR_COLUMNS = STORE_COLUMNS  # what a found vector carries: chunk_hash, dim, vector, embedded_at


@dataclass(frozen=True)
class VectorPlan:
    own: pl.DataFrame  # chunk_hash: vectors the shard's previous rows hold for this model
    from_store: Hits  # hashes found in the vector store, and where
    to_embed: pl.DataFrame  # chunk_hash, token_count: through the model

    @property
    def tokens(self) -> int:
        return int(self.to_embed["token_count"].sum())


def plan_vectors(chunks: pl.DataFrame, own: pl.DataFrame, lookup) -> VectorPlan:
    """`chunks`: chunk_hash, token_count of the shard's chunks; `own`: chunk_hash of the shard's previous
    rows for the model; `lookup(hashes) -> Hits`: the store's answer, asked only for hashes not the shard's own."""
    hashes = chunks.group_by("chunk_hash").agg(pl.col("token_count").first())
    own = hashes.select("chunk_hash").join(own, on="chunk_hash", how="semi")
    not_own = hashes.join(own, on="chunk_hash", how="anti")
    hits = lookup(not_own["chunk_hash"].to_list()) if not_own.height else Hits()
    return VectorPlan(own, hits, not_own.join(hits.hashes, on="chunk_hash", how="anti"))


def read_vector_plan(lake: Lakehouse, store: VectorStore, shard: str, model_key: str, chunks: pl.DataFrame) -> VectorPlan:
    own = pl.from_arrow(lake.scan(EMBEDDINGS, EqualTo("shard", shard) & EqualTo("model", model_key), ("chunk_hash",)))
    return plan_vectors(chunks, own, lambda hashes: store.lookup(model_key, hashes))


def reused_vectors(lake: Lakehouse, store: VectorStore, shard: str, model_key: str, plan: VectorPlan) -> Iterator[pa.Table]:
    """(chunk_hash, dim, vector, embedded_at) batches of the plan's reusable vectors: own rows, then the store's."""
    if plan.own.height:
        yield from lake.batches(EMBEDDINGS, EqualTo("shard", shard) & EqualTo("model", model_key), VECTOR_COLUMNS)
    yield from store.vectors(plan.from_store)


def first_rows(rows: pa.Table, keep: pl.DataFrame) -> pl.DataFrame:
    """chunk_hash, i (row number) of the first row of each chunk_hash in `rows` whose hash is in `keep`, in order."""
    hashes = pl.DataFrame({"chunk_hash": pl.from_arrow(rows["chunk_hash"]), "i": np.arange(rows.num_rows)})
    return hashes.unique("chunk_hash", keep="first", maintain_order=True).join(keep, on="chunk_hash", how="semi", maintain_order="left")


def texts_to_embed(lake: Lakehouse, shard: str, to_embed: pl.DataFrame, window: int) -> Iterator[pa.Table]:
    """(chunk_hash, text) of each hash in `to_embed` once, `window` texts at a time, streamed from the
    chunks partition: the texts stay in Arrow until the model takes them."""
    todo = to_embed.select("chunk_hash")
    pending = CHUNKS.arrow_schema.empty_table().select(["chunk_hash", "text"])
    for batch in lake.partition_batches(CHUNKS, shard, ("chunk_hash", "text")):
        fresh = first_rows(batch, todo)
        todo = todo.join(fresh, on="chunk_hash", how="anti")
        pending = pa.concat_tables([pending, batch.take(fresh["i"].to_arrow())])
        while pending.num_rows >= window:
            yield pending.slice(0, window)
            pending = pending.slice(window)
    if pending.num_rows:
        yield pending


def window_size(embedder: TextBatcher) -> int:
    return EMBED_WINDOW * (8 if embedder.cuda else 1)


def new_vectors(hashes: list[str], vectors: np.ndarray, stamp: dt.datetime) -> pa.Table:
    """(chunk_hash, dim, vector, embedded_at) rows for freshly embedded vectors, built without Python lists."""
    n, dim = vectors.shape
    vector_type = EMBEDDINGS.arrow_schema.field("vector").type
    offsets = pa.array(np.arange(0, (n + 1) * dim, dim, dtype=np.int64))
    values = pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel())
    return pa.table(
        {"chunk_hash": hashes, "dim": pa.array([dim] * n, pa.int32()),
         "vector": pa.LargeListArray.from_arrays(offsets, values).cast(vector_type),
         "embedded_at": pa.array([stamp] * n, EMBEDDINGS.arrow_schema.field("embedded_at").type)},
        schema=pa.schema([EMBEDDINGS.arrow_schema.field(c) for c in VECTOR_COLUMNS]),
    )


@dataclass
class EmbedStats:
    chunks: int = 0  # texts sent to the model
    seconds: float = 0.0  # time inside the model calls


def embed_windows(embedder: TextBatcher, windows: Iterable[pa.Table], stamp: dt.datetime, stats: EmbedStats,
                  total: int, log, shard: str = "") -> Iterator[pa.Table]:
    """New vectors (`new_vectors` rows) for each window of (chunk_hash, text), counted in `stats`; each
    batch's progress goes to `progress` listeners (the CLI's bar)."""
    done = stats.chunks

    def batch_done(n: int) -> None:
        nonlocal done
        failpoint("embed.batch")  # in the process that asked, wherever the model runs (model_process.py)
        done += n
        progress.report(shard, "embeddings", done, total)

    progress.report(shard, "embeddings", done, total)  # the bar appears with its total before the first batch
    for window in windows:
        started = time.perf_counter()
        vectors = embedder.encode(window["text"].to_pylist(), batch_done)
        stats.seconds += time.perf_counter() - started
        stats.chunks += window.num_rows
        log.info(f"embedded {stats.chunks}/{total} chunks on {embedder.device}")
        yield new_vectors(window["chunk_hash"].to_pylist(), vectors, stamp)


class VectorRows:
    """Writes the shard's embeddings rows from vectors found a batch at a time (reused or new): every
    chunk gets the first vector found for its hash, and each hash is written once."""

    def __init__(self, out: PartitionWriter, shard: str, model_key: str, chunks: pl.DataFrame):
        self.out, self.shard, self.model_key = out, shard, model_key
        self.chunk_ids = chunks.select("chunk_hash", "chunk_id")
        self.pending = chunks.select("chunk_hash").unique()  # hashes whose rows are not written yet

    def add(self, found: pa.Table) -> None:
        """Rows for every chunk whose hash `found` (VECTOR_COLUMNS) holds and is still pending."""
        first = first_rows(found, self.pending)
        if first.is_empty():
            return
        self.pending = self.pending.join(first, on="chunk_hash", how="anti")
        rows = first.join(self.chunk_ids, on="chunk_hash").sort("i", "chunk_id")
        n = rows.height
        self.out.add(found.take(rows["i"].to_arrow())
                     .append_column("shard", pa.array([self.shard] * n, pa.string()))
                     .append_column("chunk_id", rows["chunk_id"].to_arrow().cast(pa.string()))
                     .append_column("model", pa.array([self.model_key] * n, pa.string())))
