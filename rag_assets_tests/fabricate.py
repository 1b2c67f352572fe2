"""Many synced shards without syncing them: tables, points and Dagster records written directly, the way a
sync would leave them, for measuring what `status` and a no-change `sync` cost at 1,000 shards."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def synced_shards(source: Path, instance: dg.DagsterInstance, resources: dict, shards: int, docs: int = 2) -> list[str]:
    """`shards` shards of `docs` one-chunk documents each, written to the source folder, to every table
    (one commit per table), to the live collection and to the instance (partitions and the materializations
    the sensor compares against). Returns the shard names."""
    from rag_assets import aliases
    from rag_assets.chunking import chunk_id_for
    from rag_assets.defs.partitions import shards as shards_def
    from rag_assets.defs.resources import index_identity
    from rag_assets.index import Point, point_id_for
    from rag_assets.shard_state import FINGERPRINT, RAW_DOCUMENTS_KEY, VECTOR_INDEX_KEY, index_settings
    from rag_assets.sparse import sparse_of
    from rag_assets.steps.chunks import with_sparse
    from rag_assets.tables import CHUNKS, EMBEDDINGS, RAW_DOCUMENTS, VECTOR_INDEX

    names = [f"shard-{s:04d}" for s in range(shards)]
    for name in names:
        (source / name).mkdir(parents=True, exist_ok=True)
        for d in range(docs):
            (source / name / f"doc-{d}.md").write_text(f"# Doc {d}\n\nShard {name} document {d}.\n")
    src = resources["source"].open()
    listings = src.list_shards()
    settings = index_settings(resources["model"], resources["qdrant"])
    identity = index_identity(resources["model"], resources["qdrant"])
    alias = resources["qdrant"].alias_index()
    target = aliases.sync_target(alias, identity)  # the physical collection a sync writes into
    model_key, stamp, dim = settings["index_model"], dt.datetime.now(dt.timezone.utc), 384
    rng = np.random.default_rng(0)
    raw, chunks, vectors, index, points = [], [], [], [], []
    for name in names:
        for f in listings[name].files:
            doc_id, text = f.path, (source / f.path).read_text()
            chunk_id, chunk_hash = chunk_id_for(doc_id, 0), _sha(text)
            raw.append({"shard": name, "doc_id": doc_id, "title": doc_id, "text": text, "metadata": "{}", "content_hash": _sha(doc_id + text),
                        "source_uri": src.uri(f.path), "source_size": f.size, "source_version": f.version, "ingested_at": stamp})
            chunks.append({"shard": name, "doc_id": doc_id, "chunk_id": chunk_id, "chunk_index": 0, "text": text, "token_count": 10,
                           "char_start": 0, "char_end": len(text), "chunk_hash": chunk_hash, "metadata": "{}", "doc_hash": raw[-1]["content_hash"]})
            vector = rng.random(dim, dtype=np.float32)
            vectors.append({"shard": name, "chunk_id": chunk_id, "chunk_hash": chunk_hash, "model": model_key, "dim": dim,
                            "vector": vector.tolist(), "embedded_at": stamp})
            index.append({"shard": name, "chunk_id": chunk_id, "point_id": point_id_for(chunk_id), "chunk_hash": chunk_hash,
                          "collection": target.collection, "synced_at": stamp})
            points.append(Point(point_id_for(chunk_id), vector, {"shard": name, "chunk_hash": chunk_hash, "model": model_key}))
    # Every chunk's BM25 vector, as the chunks step computes it (none with RAG_SPARSE=none), in the table and the points.
    chunk_table = with_sparse(pa.Table.from_pylist(chunks, CHUNKS.arrow_schema), resources["model"].sparse_encoder())
    if sparse_of(identity) != "none":
        sparse = zip(chunk_table["sparse_indices"].to_pylist(), chunk_table["sparse_values"].to_pylist())
        points = [dataclasses.replace(p, sparse=vector) for p, vector in zip(points, sparse)]
    lake = resources["iceberg"].lakehouse()
    lake.table(CHUNKS).append(chunk_table)
    for spec, rows in ((RAW_DOCUMENTS, raw), (EMBEDDINGS, vectors), (VECTOR_INDEX, index)):
        lake.table(spec).append(pa.Table.from_pylist(rows, spec.arrow_schema))
    with target.session() as session:
        session.ensure_collection(dim, identity)
        session.upsert(points)
    aliases.publish(alias, target.collection)
    instance.add_dynamic_partitions(shards_def.name, names)
    for name in names:
        fp = listings[name].fingerprint
        for key, meta in ((RAW_DOCUMENTS_KEY, {FINGERPRINT: fp, "documents": docs, "quarantined": 0}),
                          (dg.AssetKey("chunks"), {"chunks": docs}), (VECTOR_INDEX_KEY, {FINGERPRINT: fp, **settings})):
            instance.report_runless_asset_event(dg.AssetMaterialization(key, partition=name, metadata=meta))
    return names
