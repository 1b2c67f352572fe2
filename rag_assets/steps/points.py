"""vector_index: a shard's points, what the collection must hold for it, how the live collection differs,
the points themselves (built from the Iceberg tables a batch at a time) and the rows vector_index records.

Rule (points by id + hash): a point is upserted when it is missing from the live collection or holds
another chunk hash; a live point the shard no longer lists is deleted; every other point is left alone.

The per-chunk bookkeeping (point ids, chunk ids, hashes) is held as polars frames and compared by joins;
texts and vectors are never held for more than one batch (benchmarks/RESULTS.md, "Memory").
"""

from __future__ import annotations

import datetime as dt
import os
import tempfile
from collections.abc import Iterator

import dagster as dg
import numpy as np
import polars as pl
import pyarrow.compute as pc

from rag_assets.index import CollectionMismatch, IndexSession, Point, point_id_for
from rag_assets.steps.chunks import SPARSE_COLUMNS
from rag_assets.steps.rows import keep_stamps
from rag_assets.tables import CHUNKS, EMBEDDINGS, RAW_DOCUMENTS, VECTOR_INDEX, Lakehouse

POINT_BATCH = 1024  # points built and upserted at a time


class ShardMismatch(dg.Failure):
    """The shard's embeddings do not match its chunks: an upstream step has to run first."""


def shard_point_keys(lake: Lakehouse, shard: str) -> pl.DataFrame:
    """point_id, chunk_id, chunk_hash, model, dim: what the collection must hold for each chunk of
    `shard` (no vectors, no text)."""
    emb = pl.from_arrow(lake.read_partition(EMBEDDINGS, shard, ("chunk_id", "chunk_hash", "model", "dim")))
    chunk_ids = pl.from_arrow(lake.read_partition(CHUNKS, shard, ("chunk_id",)))
    if emb["chunk_id"].n_unique() != emb.height or emb.join(chunk_ids, on="chunk_id", how="anti").height:
        raise ShardMismatch(f"embeddings of shard {shard!r} do not match its chunks; materialize chunks and embeddings first")
    point_ids = pl.Series("point_id", [point_id_for(c) for c in emb["chunk_id"]], pl.String)
    return emb.with_columns(point_ids).select("point_id", "chunk_id", "chunk_hash", "model", "dim")


def require_sparse(chunks: pl.DataFrame, sparse_key: str, shard: str) -> None:
    """Fail unless every chunk's sparse vector is by the collection's encoder (chunks must run first)."""
    stale = chunks.filter(pl.col("sparse_encoder").is_null() | (pl.col("sparse_encoder") != sparse_key)).height
    if stale:
        raise ShardMismatch(f"{stale} chunks of shard {shard!r} have no sparse vector by {sparse_key}; materialize chunks first")


def require_model(desired: pl.DataFrame, model_key: str, shard: str) -> None:
    """Fail unless every embedding of the shard is from `model_key` (embeddings must run first)."""
    stale = desired.filter(pl.col("model") != model_key).height
    if stale:
        raise ShardMismatch(f"{stale} embeddings of shard {shard!r} are not from {model_key}; materialize embeddings first")


def prepare_collection(session: IndexSession, collection: str, desired: pl.DataFrame, model_key: str, identity: dict) -> None:
    """Create the collection for the shard's vectors if needed (recording `identity`, the model and chunker
    its points depend on); refuse one that holds another model's points."""
    if desired.is_empty():
        return
    session.ensure_collection(desired["dim"][0], identity)
    foreign = session.count(other_model=model_key)
    if foreign:
        raise CollectionMismatch(
            f"collection {collection!r} holds {foreign} points of another model; a model change is a "
            "full re-embed into a new collection: set RAG_QDRANT_COLLECTION"
        )


def points_to_sync(desired: pl.DataFrame, live: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series]:
    """(rows of `desired` whose point is missing or holds another chunk hash, ids of live points that
    `desired` does not list)."""
    current = desired.join(live, on=["point_id", "chunk_hash"], how="semi")
    upsert = desired.join(current, on="point_id", how="anti", maintain_order="left")
    delete = live.join(desired, on="point_id", how="anti").sort("point_id")["point_id"]
    return upsert, delete


def mismatches(desired: pl.DataFrame, live: pl.DataFrame) -> dict[str, list[str]]:
    """Point ids missing from `live`, extra in it, and held with another chunk hash."""
    both = desired.join(live, on="point_id", how="inner", suffix="_live")
    return {
        "missing": desired.join(live, on="point_id", how="anti")["point_id"].sort().to_list(),
        "extra": live.join(desired, on="point_id", how="anti")["point_id"].sort().to_list(),
        "wrong_hash": both.filter(pl.col("chunk_hash") != pl.col("chunk_hash_live"))["point_id"].sort().to_list(),
    }


PAYLOAD_FIELDS = ("doc_id", "chunk_id", "chunk_index", "chunk_hash", "title", "text", "source_uri")


def point_payload(shard: str, model_key: str, row: dict) -> dict:
    """What every point carries: the fields search returns and those the index is listed and diffed by."""
    return {"shard": shard, "model": model_key, **{f: row[f] for f in PAYLOAD_FIELDS}}


def point_batches(lake: Lakehouse, shard: str, keys: pl.DataFrame, sparse_key: str = "none", size: int | None = None) -> Iterator[list[Point]]:
    """The points for `keys` (rows of `shard_point_keys`), built from the Iceberg tables `size` at a time,
    with the chunks' sparse vectors unless `sparse_key` (the collection's encoder) is "none".
    Vectors and texts sit in different tables in different orders, so the wanted vectors are first
    spilled to a temporary file (float32, one row each) and read back by row while the chunk texts
    stream by: memory stays at one batch however many points are rebuilt."""
    if keys.is_empty():
        return
    size = size or POINT_BATCH
    dim = keys["dim"][0]
    wanted = keys["chunk_id"].to_arrow()
    spilled: list[pl.DataFrame] = []  # chunk_id -> row in the spill file
    with tempfile.TemporaryFile(prefix="rag-vectors-") as spill:
        rows = 0
        for batch in lake.partition_batches(EMBEDDINGS, shard, ("chunk_id", "vector")):
            batch = batch.filter(pc.is_in(batch["chunk_id"], value_set=wanted))
            values = batch["vector"].combine_chunks().flatten().to_numpy()
            if values.size != batch.num_rows * dim:  # rows are found by position: every vector must be `dim` long
                raise ShardMismatch(f"embeddings of shard {shard!r} are not all {dim}-d; materialize embeddings first")
            spilled.append(pl.DataFrame({"chunk_id": pl.from_arrow(batch["chunk_id"]),
                                         "row": np.arange(rows, rows + batch.num_rows, dtype=np.int64)}))
            rows += batch.num_rows
            spill.write(np.ascontiguousarray(values, dtype=np.float32).tobytes())
        spill.flush()
        located = keys.join(pl.concat(spilled), on="chunk_id")
        del spilled
        fd, row_bytes = spill.fileno(), dim * 4
        docs = pl.from_arrow(lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "title", "source_uri")))
        points: list[Point] = []
        with_sparse = sparse_key != "none"
        columns = ("chunk_id", "doc_id", "chunk_index", "text") + (SPARSE_COLUMNS if with_sparse else ())
        for batch in lake.partition_batches(CHUNKS, shard, columns):
            batch = pl.from_arrow(batch.filter(pc.is_in(batch["chunk_id"], value_set=wanted)))
            if with_sparse:
                require_sparse(batch, sparse_key, shard)
            batch = batch.join(located, on="chunk_id", maintain_order="left").join(docs, on="doc_id", how="left", maintain_order="left")
            for r in batch.iter_rows(named=True):
                vector = np.frombuffer(os.pread(fd, row_bytes, r["row"] * row_bytes), dtype=np.float32)
                sparse = (r["sparse_indices"], r["sparse_values"]) if with_sparse else None
                points.append(Point(r["point_id"], vector, point_payload(shard, r["model"], r), sparse))
                if len(points) >= size:
                    yield points
                    points = []
        if points:
            yield points


def index_rows(desired: pl.DataFrame, previous: pl.DataFrame, shard: str, collection: str, stamp: dt.datetime) -> pl.DataFrame:
    """The vector_index rows of the shard's desired points; unchanged points keep their synced_at (from
    `previous`: point_id, chunk_hash, synced_at), so a re-run writes the same rows and commits nothing."""
    rows = desired.select(
        shard=pl.lit(shard), chunk_id="chunk_id", point_id="point_id", chunk_hash="chunk_hash",
        collection=pl.lit(collection), synced_at=pl.lit(stamp, dtype=pl.Datetime("us", "UTC")),
    )
    return keep_stamps(rows, previous, "point_id", "chunk_hash", "synced_at")


def read_index_rows(lake: Lakehouse, shard: str) -> pl.DataFrame:
    return pl.from_arrow(lake.read_partition(VECTOR_INDEX, shard, ("point_id", "chunk_hash", "synced_at")))
