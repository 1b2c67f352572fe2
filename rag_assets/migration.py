"""Migrating the live alias to another model or chunker, without downtime and without a silent loss of quality.

`rag-assets migrate` (and `migration_job`, rag_assets/defs/migration.py) builds the target's physical
collection (aliases.physical_name) beside the live one, shard by shard, from the Iceberg tables:

- chunks: the `chunks` partition as it is when the chunker stays; split again from `raw_documents` with
  the target chunker when it changes (nothing is written to `chunks`, which the live alias still needs);
- sparse vectors: as the chunks table holds them when they are the target's encoder's, else encoded again
  (no model: ~30 µs a chunk);
- vectors: from the vector store by (chunk_hash, target model), through the target model only when the
  store has none; new vectors go to the store, so the syncs after the switch reuse every one of them;
- points: diffed by id and chunk hash against what the target collection holds, as `vector_index` does:
  a rebuilt shard upserts only what changed and deletes what vanished, so a build can be resumed.

The live alias keeps serving and syncing meanwhile. A shard is built from its last synced state (the
`vector_index` record's fingerprint, kept per shard in the instance); when the build is done, the shards
synced since are built again and removed shards deleted from the target (catch-up), shards with a run in
flight are left to a later pass. Then both collections are evaluated on one query set, and the alias
switches only if the target's recall@10 is not below the live one's by more than RAG_EVAL_TOLERANCE.

After the switch the configuration must name the target (the report's `settings`): until then syncs are
refused with that message, and with it every shard re-syncs once against the new collection, at no model
cost, which also brings in any change that landed between the last catch-up and the switch.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from rag_assets.chunking import Chunker
from rag_assets.index import IndexSession, Point, point_id_for
from rag_assets.sparse import SparseEncoder, encoder_for, sparse_of
from rag_assets.steps import chunks as chunking
from rag_assets.steps.points import point_payload
from rag_assets.steps.vectors import new_vectors
from rag_assets.tables import CHUNKS, RAW_DOCUMENTS, Lakehouse
from rag_assets.vector_store import VectorStore

BATCH = 1024  # chunks looked up, embedded and upserted at a time
CHUNK_COLUMNS = ("doc_id", "chunk_id", "chunk_index", "text", "chunk_hash")
BUILT_KEY = "rag/migration/{collection}"  # instance KV: JSON {shard: the fingerprint it was built from}


@dataclass
class ShardBuild:
    points: int = 0
    upserted: int = 0
    deleted: int = 0
    embedded: int = 0  # chunk texts sent to the target model
    reused: int = 0  # vectors found in the vector store
    rechunked: bool = False

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def chunk_batches(lake: Lakehouse, shard: str, chunker: Chunker, encoder: SparseEncoder | None, rechunk: bool) -> Iterator[pl.DataFrame]:
    """The shard's chunks under `chunker` (CHUNK_COLUMNS and SPARSE_COLUMNS, by `encoder`): as the chunks
    table holds them (sparse vectors encoded only where the table's are another encoder's), or split again."""
    columns = list(CHUNK_COLUMNS + chunking.SPARSE_COLUMNS)
    if not rechunk:
        for batch in lake.partition_batches(CHUNKS, shard, tuple(columns)):
            yield pl.from_arrow(batch if chunking.sparse_is_current(batch, encoder) else chunking.with_sparse(batch, encoder))
        return
    for batch in lake.partition_batches(RAW_DOCUMENTS, shard, ("doc_id", "text", "metadata", "content_hash")):
        yield pl.from_arrow(chunking.chunk_rows(shard, batch, chunker, encoder).select(columns))


def needs_rechunk(lake: Lakehouse, shard: str, chunker: Chunker) -> bool:
    return not chunking.same_chunker(lake, shard, chunker)


@dataclass
class TargetBuilder:
    """Builds shards of the target collection: `session` is open on it, `embedder` is the target model's
    (loaded on first need), `model_key` its identity."""

    lake: Lakehouse
    store: VectorStore
    session: IndexSession
    chunker: Chunker
    model_key: str
    identity: dict
    load_embedder: object  # () -> TextBatcher
    _embedder: object = field(default=None, init=False)
    _ensured: bool = field(default=False, init=False)

    def embed(self, texts: list[str]) -> np.ndarray:
        if self._embedder is None:
            self._embedder = self.load_embedder()
        return self._embedder.encode(texts)

    @property
    def encoder(self) -> SparseEncoder | None:
        return encoder_for(sparse_of(self.identity))

    def build(self, shard: str, log) -> ShardBuild:
        stats = ShardBuild(rechunked=needs_rechunk(self.lake, shard, self.chunker))
        live = self.session.shard_points(shard)  # point_id, chunk_hash the target holds for the shard now
        docs = pl.from_arrow(self.lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "title", "source_uri")))
        wanted: list[pl.Series] = []
        with self.store.appender(self.model_key) as new_in_store:
            for batch in chunk_batches(self.lake, shard, self.chunker, self.encoder, stats.rechunked):
                batch = batch.with_columns(point_id=pl.Series([point_id_for(c) for c in batch["chunk_id"]], dtype=pl.String))
                wanted.append(batch["point_id"])
                todo = batch.join(live, on=["point_id", "chunk_hash"], how="anti")
                for start in range(0, todo.height, BATCH):
                    part = todo.slice(start, BATCH)
                    embedded = stats.embedded
                    vectors = self._vectors(part.unique("chunk_hash", maintain_order=True), new_in_store, stats)
                    if stats.embedded > embedded:  # committed now, so a repeat of the text in a later batch finds it
                        new_in_store.commit()
                    self._upsert(self._points(shard, part.join(docs, on="doc_id", how="left"), vectors))
                    stats.upserted += part.height
        kept = pl.concat(wanted) if wanted else pl.Series("point_id", [], pl.String)
        gone = live.filter(~pl.col("point_id").is_in(kept.implode()))["point_id"].to_list()
        self.session.delete(gone)
        stats.deleted, stats.points = len(gone), kept.len()
        log.info(f"migration: shard {shard!r} into {self.identity['model']}: {stats.as_dict()}")
        return stats

    def _upsert(self, points: list[Point]) -> None:
        if points and not self._ensured:  # the collection is made with the target's dimension and identity
            self.session.ensure_collection(len(points[0].vector), self.identity)
            self._ensured = True
        self.session.upsert(points)

    def _vectors(self, texts: pl.DataFrame, new_in_store, stats: ShardBuild) -> dict[str, np.ndarray]:
        """chunk_hash -> vector for each (chunk_hash, text) row: from the store, else from the target model."""
        found: dict[str, np.ndarray] = {}
        for rows in self.store.vectors(self.store.lookup(self.model_key, texts["chunk_hash"].to_list())):
            flat = rows["vector"].combine_chunks().flatten().to_numpy().reshape(rows.num_rows, -1)
            found.update(zip(rows["chunk_hash"].to_pylist(), flat))
        stats.reused += len(found)
        missing = texts.filter(~pl.col("chunk_hash").is_in(list(found)))
        if missing.height:
            embedded = self.embed(missing["text"].to_list())
            new_in_store.add(new_vectors(missing["chunk_hash"].to_list(), embedded, dt.datetime.now(dt.timezone.utc)))
            found.update(zip(missing["chunk_hash"].to_list(), embedded))
            stats.embedded += missing.height
        return found

    def _points(self, shard: str, rows: pl.DataFrame, vectors: dict[str, np.ndarray]) -> list[Point]:
        sparse = self.encoder is not None
        return [Point(r["point_id"], vectors[r["chunk_hash"]], point_payload(shard, self.model_key, r),
                      (r["sparse_indices"], r["sparse_values"]) if sparse else None)
                for r in rows.iter_rows(named=True)]
