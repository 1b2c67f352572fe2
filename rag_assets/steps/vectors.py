"""embeddings: which vectors are reused and which chunks go through the model, and the rows they become.

Rule (vector by chunk_hash + model): nothing is embedded twice for the same (chunk_hash, model). A chunk
takes its vector from, in this order, the shard's own previous rows, another shard's rows (each reused
hash is read from one shard only, the first by name, so only the partitions that hold them are read),
and only then the model. A text can repeat, so several chunks can share one hash and one vector.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa
from pyiceberg.expressions import EqualTo, In

from rag_assets.embedding import Embedder
from rag_assets.steps.rows import stacked
from rag_assets.tables import CHUNKS, EMBEDDINGS, Lakehouse, PartitionWriter

# Chunk texts sent to the model per call: ~4 MB of text and 6 MB of 384-d vectors on the CPU. A GPU gets
# 8x more per call, so that its one host sync per call and the table writes between calls stay rare.
EMBED_WINDOW = 4096
VECTOR_COLUMNS = ("chunk_hash", "dim", "vector", "embedded_at")  # what a found vector carries


@dataclass(frozen=True)
class VectorPlan:
    own: pl.DataFrame  # chunk_hash: vectors the shard's previous rows hold for this model
    from_other_shards: pl.DataFrame  # chunk_hash, shard: read from that shard's rows
    to_embed: pl.DataFrame  # chunk_hash, token_count: through the model

    @property
    def tokens(self) -> int:
        return int(self.to_embed["token_count"].sum())


def plan_vectors(chunks: pl.DataFrame, own: pl.DataFrame, others: Iterable[pl.DataFrame]) -> VectorPlan:
    """`chunks`: chunk_hash, token_count of the shard's chunks; `own`: chunk_hash of the shard's previous
    rows for the model; `others`: (chunk_hash, shard) batches of other shards' rows for the model,
    consumed only when some hash is not the shard's own."""
    hashes = chunks.group_by("chunk_hash").agg(pl.col("token_count").first())
    own = hashes.select("chunk_hash").join(own, on="chunk_hash", how="semi")
    not_own = hashes.join(own, on="chunk_hash", how="anti")
    # Other shards' hashes stream past and are matched by a join (an `In` filter would hold every hash of
    # a new shard as Python objects; random hashes prune no files either way).
    matched = [batch.join(not_own, on="chunk_hash", how="semi") for batch in others] if not_own.height else []
    from_others = stacked(matched, {"chunk_hash": pl.String, "shard": pl.String}).group_by("chunk_hash").agg(pl.col("shard").min())
    return VectorPlan(own, from_others, not_own.join(from_others, on="chunk_hash", how="anti"))


def read_vector_plan(lake: Lakehouse, shard: str, model_key: str, chunks: pl.DataFrame) -> VectorPlan:
    same_model = EqualTo("model", model_key)
    own = pl.from_arrow(lake.scan(EMBEDDINGS, EqualTo("shard", shard) & same_model, ("chunk_hash",)))
    others = (pl.from_arrow(b) for b in lake.batches(EMBEDDINGS, same_model, ("chunk_hash", "shard")))
    return plan_vectors(chunks, own, others)


def reused_vectors(lake: Lakehouse, shard: str, model_key: str, plan: VectorPlan) -> Iterator[pa.Table]:
    """(chunk_hash, dim, vector, embedded_at) batches of the plan's reusable vectors: own rows, then other shards'."""
    same_model = EqualTo("model", model_key)
    if plan.own.height:
        yield from lake.batches(EMBEDDINGS, EqualTo("shard", shard) & same_model, VECTOR_COLUMNS)
    if plan.from_other_shards.height:
        sources = plan.from_other_shards["shard"].unique().sort().to_list()
        yield from lake.where_in_batches(EMBEDDINGS, "chunk_hash", plan.from_other_shards["chunk_hash"].to_list(),
                                         VECTOR_COLUMNS, extra=same_model & In("shard", sources))


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


def window_size(embedder: Embedder) -> int:
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


def embed_windows(embedder: Embedder, windows: Iterable[pa.Table], stamp: dt.datetime, stats: EmbedStats,
                  total: int, log) -> Iterator[pa.Table]:
    """New vectors (`new_vectors` rows) for each window of (chunk_hash, text), counted in `stats`."""
    for window in windows:
        started = time.perf_counter()
        vectors = embedder.encode(window["text"].to_pylist())
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
