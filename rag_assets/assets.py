"""The four shard-partitioned assets: raw_documents -> chunks -> embeddings -> vector_index.

Each materialization reads its upstream partition from Iceberg, writes its own partition in one
commit, and reports what it did as metadata. Timestamps of unchanged rows are carried over, so
re-running a partition reproduces the same rows (and commits nothing).
"""


import datetime as dt
import hashlib
import json
import os
import time
from collections import Counter

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa
from pyiceberg.expressions import EqualTo

from rag_assets.launcher import GPU_POOL, GPU_TAG
from rag_assets.index import CollectionMismatch, Point, point_id_for
from rag_assets.parsing import Document, parse_file
from rag_assets.chunking import chunk_id_for
from rag_assets.resources import IcebergResource, ModelResource, QdrantResource, SourceResource
from rag_assets.tables import CHUNKS, EMBEDDINGS, QUARANTINE, RAW_DOCUMENTS, VECTOR_INDEX, Lakehouse, TableSpec, WriteResult

shards = dg.DynamicPartitionsDefinition(name="shards")
GROUP = "rag"


def shard_asset(**kwargs):
    """@asset partitioned by source shard, in the project's group."""
    return dg.asset(partitions_def=shards, group_name=GROUP, **kwargs)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def digest(rows: list[tuple]) -> str:
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update("\0".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()


def table_metadata(spec: TableSpec, result: WriteResult, started: float, **counts) -> dict:
    return {
        "dagster/row_count": result.rows,
        "dagster/table_name": result.table,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(f.name, str(f.field_type), description=None) for f in spec.schema.fields]
        ),
        "iceberg/snapshot_id": dg.MetadataValue.text(str(result.snapshot_id)),
        "iceberg/committed": result.committed,
        "seconds": round(time.perf_counter() - started, 3),
        **counts,
    }


def by_key(rows: pa.Table, key: str) -> dict[str, list[dict]]:
    """Rows grouped by one column's value, in table order."""
    grouped: dict[str, list[dict]] = {}
    for row in rows.to_pylist():
        grouped.setdefault(row[key], []).append(row)
    return grouped


def carried(previous: pa.Table, key: str, match: str, stamp: str) -> dict[str, tuple[str, dt.datetime]]:
    """key -> (match value, timestamp) from the partition's previous rows (read with just these columns)."""
    return {r[key]: (r[match], r[stamp]) for r in previous.to_pylist()}


# ---------------------------------------------------------------------------------------------------


@shard_asset(
    kinds={"iceberg", "python"},
    description="Documents read from one source shard, with content hashes; rejected inputs go to `quarantine`.",
)
def raw_documents(
    context: dg.AssetExecutionContext, source: SourceResource, iceberg: IcebergResource
) -> dg.MaterializeResult:
    started = time.perf_counter()
    shard = context.partition_key
    src = source.open()
    listing = src.list_shard(shard)
    if not listing.files and not src.has_shard(shard):
        raise dg.Failure(f"shard {shard!r} is not in the source {source.location}; a sync removes it")
    lake = iceberg.lakehouse()
    # A file whose size and version (mtime or ETag) are unchanged keeps its previous rows (documents and
    # quarantine alike) without being read again: only new or modified files cost a read.
    previous_rows = by_key(lake.read_partition(RAW_DOCUMENTS, shard), "source_uri")
    previous_rejects = by_key(lake.read_partition(QUARANTINE, shard), "source_uri")
    previous = {d["doc_id"]: (d["content_hash"], d["ingested_at"]) for rows in previous_rows.values() for d in rows}
    limit = source.max_document_mb * 1024 * 1024
    docs, rejects, stamp, files_read = [], [], now(), 0

    def reject(uri: str, record: str, reason: str, detail: str) -> None:
        rejects.append({"shard": shard, "source_uri": uri, "record": record, "reason": reason, "detail": detail})

    to_read = []
    for f in listing.files:
        uri = src.uri(f.path)
        if f.rejected:
            reject(uri, "", "unreadable", f.rejected)
        elif f.size > limit:
            reject(uri, "", "too_large", f"{f.size} bytes > {source.max_document_mb} MiB limit")
        elif (kept := previous_rows.get(uri)) and all(
            d["source_size"] == f.size and d["source_version"] == f.version for d in kept
        ):
            docs.extend(kept)
            rejects.extend(previous_rejects.get(uri, []))
        else:
            to_read.append(f)
    for f, data in src.read_many(to_read):  # streamed: only a few files' bytes are held at a time
        uri = src.uri(f.path)
        files_read += 1
        if isinstance(data, OSError):  # vanished or unreadable since listing
            reject(uri, "", "unreadable", f"{type(data).__name__}: {data.strerror or data}")
            continue
        for item in parse_file(f.path, data, source.fields):
            if not isinstance(item, Document):
                reject(uri, item.record, item.reason, item.detail)
                continue
            old_hash, old_stamp = previous.get(item.doc_id, (None, None))
            docs.append(
                {
                    "shard": shard, "doc_id": item.doc_id, "title": item.title, "text": item.text,
                    "metadata": item.metadata, "content_hash": item.content_hash, "source_uri": uri,
                    "source_size": f.size, "source_version": f.version,
                    "ingested_at": old_stamp if old_hash == item.content_hash else stamp,
                }
            )
    result = lake.replace_partition(RAW_DOCUMENTS, shard, pa.Table.from_pylist(docs, RAW_DOCUMENTS.arrow_schema))
    lake.replace_partition(QUARANTINE, shard, pa.Table.from_pylist(rejects, QUARANTINE.arrow_schema))
    changed = sum(1 for d in docs if previous.get(d["doc_id"], (None,))[0] != d["content_hash"])
    if rejects:
        context.log.warning(f"{len(rejects)} inputs of shard {shard!r} quarantined: {dict(Counter(r['reason'] for r in rejects))}")
    return dg.MaterializeResult(
        metadata=table_metadata(
            RAW_DOCUMENTS, result, started,
            documents=len(docs),
            new_or_changed_documents=changed,
            removed_documents=len(set(previous) - {d["doc_id"] for d in docs}),
            quarantined=len(rejects),
            quarantine_reasons=dg.MetadataValue.json(dict(Counter(r["reason"] for r in rejects))),
            source_files=len(listing.files),
            source_files_read=files_read,
            source_bytes=listing.total_bytes,
            source_fingerprint=listing.fingerprint,
        ),
        data_version=dg.DataVersion(digest([(d["doc_id"], d["content_hash"]) for d in docs])),
    )


@shard_asset(
    kinds={"iceberg", "python"},
    deps=[raw_documents],
    description="Token-aware chunks of each document (the model's tokenizer; never longer than the model reads).",
)
def chunks(context: dg.AssetExecutionContext, iceberg: IcebergResource, model: ModelResource) -> dg.MaterializeResult:
    started = time.perf_counter()
    shard = context.partition_key
    lake = iceberg.lakehouse()
    chunker = model.chunker()
    docs = lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "text", "metadata", "content_hash"))
    previous = by_key(lake.read_partition(CHUNKS, shard), "doc_id")
    rows, split_docs = [], 0
    for doc in docs.to_pylist():
        # Same content and same chunker (its settings are part of every chunk hash) -> same chunks.
        old = previous.get(doc["doc_id"], [])
        if old and old[0]["doc_hash"] == doc["content_hash"] and chunker.chunk_hash(old[0]["text"]) == old[0]["chunk_hash"]:
            rows.extend({**r, "metadata": doc["metadata"]} for r in old)
            continue
        split_docs += 1
        for c in chunker.split(doc["text"]):
            rows.append(
                {
                    "shard": shard, "doc_id": doc["doc_id"], "chunk_id": chunk_id_for(doc["doc_id"], c.chunk_index),
                    "chunk_index": c.chunk_index, "text": c.text, "token_count": c.token_count,
                    "char_start": c.char_start, "char_end": c.char_end, "chunk_hash": c.chunk_hash,
                    "metadata": doc["metadata"], "doc_hash": doc["content_hash"],
                }
            )
    result = lake.replace_partition(CHUNKS, shard, pa.Table.from_pylist(rows, CHUNKS.arrow_schema))
    tokens = [r["token_count"] for r in rows]
    return dg.MaterializeResult(
        metadata=table_metadata(
            CHUNKS, result, started,
            documents=docs.num_rows,
            documents_split=split_docs,
            chunks=len(rows),
            tokens=sum(tokens),
            max_chunk_tokens=max(tokens, default=0),
            chunker=chunker.settings_key,
        ),
        data_version=dg.DataVersion(digest([(r["chunk_id"], r["chunk_hash"]) for r in rows])),
    )


@shard_asset(
    kinds={"iceberg", "pytorch"},
    deps=[chunks],
    op_tags={GPU_TAG: "true"},  # the GPU run launcher routes runs with this step to GPU capacity
    pool=GPU_POOL,
    check_specs=[
        dg.AssetCheckSpec("all_chunks_embedded", asset="embeddings",
                          description="Every chunk of the shard has a vector for its current hash and model."),
    ],
    description="One normalized vector per chunk and model; a (chunk_hash, model) already in the table is reused, never re-embedded.",
)
def embeddings(context: dg.AssetExecutionContext, iceberg: IcebergResource, model: ModelResource) -> dg.MaterializeResult:
    started = time.perf_counter()
    shard = context.partition_key
    lake = iceberg.lakehouse()
    model_key = model.info().key
    wanted = lake.read_partition(CHUNKS, shard, ("chunk_id", "chunk_hash", "text", "token_count")).to_pylist()
    hashes = {c["chunk_hash"] for c in wanted}

    # Reuse: first this shard's previous rows, then other shards' rows, for the same (hash, model).
    # Vectors stay in Arrow: only the hash column is looked at row by row.
    cols = ("chunk_hash", "dim", "vector", "embedded_at")
    same_model = EqualTo("model", model_key)
    own = lake.scan(EMBEDDINGS, EqualTo("shard", shard) & same_model, cols)
    found = [own]
    row_of: dict[str, int] = {}  # chunk_hash -> row in the concatenation of `found`
    for i, h in enumerate(own["chunk_hash"].to_pylist()):
        if h in hashes:
            row_of.setdefault(h, i)
    from_own = len(row_of)
    others = lake.read_where_in(EMBEDDINGS, "chunk_hash", sorted(hashes - row_of.keys()), cols, extra=same_model)
    found.append(others)
    for i, h in enumerate(others["chunk_hash"].to_pylist()):
        row_of.setdefault(h, own.num_rows + i)
    from_other_shards = len(row_of) - from_own

    texts = {c["chunk_hash"]: c for c in wanted if c["chunk_hash"] not in row_of}
    embed_seconds, tokens = 0.0, sum(c["token_count"] for c in texts.values())
    if texts:
        embedder = model.embedder()
        t0 = time.perf_counter()
        vectors = embedder.encode([c["text"] for c in texts.values()])
        embed_seconds = time.perf_counter() - t0
        offset = own.num_rows + others.num_rows
        found.append(new_vectors(list(texts), vectors, now()))
        row_of.update({h: offset + i for i, h in enumerate(texts)})
        context.log.info(f"embedded {len(texts)} chunks ({tokens} tokens) in {embed_seconds:.1f}s on {embedder.device}")

    rows = pa.array([row_of[c["chunk_hash"]] for c in wanted], pa.int64())  # typed: a shard may have no chunks
    vecs = pa.concat_tables([t.cast(found[0].schema) for t in found]).take(rows)
    n = len(wanted)
    table = pa.table(
        {
            "shard": [shard] * n, "chunk_id": [c["chunk_id"] for c in wanted], "chunk_hash": [c["chunk_hash"] for c in wanted],
            "model": [model_key] * n, "dim": vecs["dim"], "vector": vecs["vector"], "embedded_at": vecs["embedded_at"],
        },
        schema=EMBEDDINGS.arrow_schema,
    )
    result = lake.replace_partition(EMBEDDINGS, shard, table)

    written = lake.read_partition(EMBEDDINGS, shard, ("chunk_id", "chunk_hash", "model"))
    have = {(r["chunk_id"], r["chunk_hash"]) for r in written.to_pylist() if r["model"] == model_key}
    absent = [c["chunk_id"] for c in wanted if (c["chunk_id"], c["chunk_hash"]) not in have]
    check = dg.AssetCheckResult(
        check_name="all_chunks_embedded",
        passed=not absent and written.num_rows == len(wanted),
        metadata={"chunks": len(wanted), "embedded_rows": written.num_rows, "missing": len(absent),
                  "missing_sample": dg.MetadataValue.json(absent[:10])},
    )
    reused = len(wanted) - len(texts)  # chunks not sent to the model (incl. repeats of one text in this shard)
    return dg.MaterializeResult(
        metadata=table_metadata(
            EMBEDDINGS, result, started,
            chunks=len(wanted),
            embedded=len(texts),
            reused=reused,
            reused_from_other_shards=from_other_shards,
            tokens_embedded=tokens,
            embed_seconds=round(embed_seconds, 3),
            tokens_per_second=round(tokens / embed_seconds, 1) if embed_seconds else 0.0,
            model=model_key,
            device=model.embedder().device if texts else "",
            # The GPU this run was pinned to by the GPU run launcher ("" = none, unset = not launched by it).
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        ),
        check_results=[check],
        data_version=dg.DataVersion(digest([(r["chunk_id"], r["chunk_hash"], model_key) for r in wanted])),
    )


def desired_points(lake: Lakehouse, shard: str) -> dict[str, Point]:
    """point id -> the point the collection must hold for each chunk of `shard`, from the Iceberg tables."""
    emb = pl.from_arrow(lake.read_partition(EMBEDDINGS, shard, ("chunk_id", "chunk_hash", "model", "vector")))
    chunk_rows = pl.from_arrow(lake.read_partition(CHUNKS, shard, ("chunk_id", "doc_id", "chunk_index", "text")))
    doc_rows = pl.from_arrow(lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "title", "source_uri")))
    joined = emb.join(chunk_rows, on="chunk_id", how="inner").join(doc_rows, on="doc_id", how="left")
    if joined.height != emb.height:
        raise dg.Failure(f"embeddings of shard {shard!r} do not match its chunks; materialize chunks and embeddings first")
    # Each point's vector is a float32 view into one Arrow buffer, not a list of Python floats (~12 KB
    # per 384-d vector, i.e. ~45 MB per 3,600 chunks); the index turns one batch at a time into floats.
    vectors = joined.get_column("vector").to_arrow()
    if isinstance(vectors, pa.ChunkedArray):
        vectors = vectors.combine_chunks()
    values = vectors.values.to_numpy(zero_copy_only=False)
    offsets = vectors.offsets.to_numpy()
    points = {}
    for i, r in enumerate(joined.drop("vector").iter_rows(named=True)):
        pid = point_id_for(r["chunk_id"])
        payload = {k: r[k] for k in ("doc_id", "chunk_id", "chunk_index", "chunk_hash", "title", "text", "source_uri")}
        points[pid] = Point(pid, values[offsets[i] : offsets[i + 1]], {"shard": shard, "model": r["model"], **payload})
    return points


def index_settings(model: ModelResource, qdrant: QdrantResource) -> dict[str, str]:
    """What a synced shard's points depend on besides its content: chunker (which includes the model's
    tokenizer), model and collection. Recorded by every vector_index materialization; a shard synced
    under other settings is re-synced (a full re-embed), see `sync.plan_sync`."""
    return {"index_chunker": model.chunker_settings_key(), "index_model": model.info().key, "index_collection": qdrant.collection}


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
        schema=pa.schema([EMBEDDINGS.arrow_schema.field(c) for c in ("chunk_hash", "dim", "vector", "embedded_at")]),
    )


def latest_fingerprint(instance: dg.DagsterInstance, shard: str) -> str | None:
    """source_fingerprint of the newest raw_documents materialization of `shard`."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=raw_documents.key, asset_partitions=[shard]), limit=1
    ).records
    if not records:
        return None
    meta = records[0].asset_materialization.metadata
    return meta["source_fingerprint"].value if "source_fingerprint" in meta else None


@shard_asset(
    kinds={"iceberg", "qdrant"},
    deps=[embeddings],
    check_specs=[
        dg.AssetCheckSpec("index_matches_table", asset="vector_index",
                          description="The live collection holds exactly the points `vector_index` lists for the shard."),
    ],
    description="What the live Qdrant collection holds for the shard; the collection is synced to it (upsert new/changed, delete vanished).",
)
def vector_index(
    context: dg.AssetExecutionContext, iceberg: IcebergResource, qdrant: QdrantResource, model: ModelResource
) -> dg.MaterializeResult:
    started = time.perf_counter()
    shard = context.partition_key
    lake = iceberg.lakehouse()
    model_key = model.info().key
    desired = desired_points(lake, shard)
    stale = sum(1 for p in desired.values() if p.payload["model"] != model_key)
    if stale:
        raise dg.Failure(f"{stale} embeddings of shard {shard!r} are not from {model_key}; materialize embeddings first")

    index = qdrant.index()
    with index.session() as session:
        if desired:
            session.ensure_collection(len(next(iter(desired.values())).vector))
            foreign = session.count(other_model=model_key)
            if foreign:
                raise CollectionMismatch(
                    f"collection {index.collection!r} holds {foreign} points of another model; a model change is a "
                    "full re-embed into a new collection: set RAG_QDRANT_COLLECTION"
                )
        live = session.shard_points(shard)
        to_upsert = [p for pid, p in desired.items() if live.get(pid) != p.payload["chunk_hash"]]
        to_delete = sorted(set(live) - set(desired))
        session.upsert(to_upsert)
        session.delete(to_delete)
        after = session.shard_points(shard)

    previous = carried(
        lake.read_partition(VECTOR_INDEX, shard, ("point_id", "chunk_hash", "synced_at")), "point_id", "chunk_hash", "synced_at"
    )
    stamp = now()
    rows = []
    for pid, p in desired.items():
        old_hash, old_stamp = previous.get(pid, (None, None))
        rows.append({"shard": shard, "chunk_id": p.payload["chunk_id"], "point_id": pid, "chunk_hash": p.payload["chunk_hash"],
                     "collection": index.collection, "synced_at": old_stamp if old_hash == p.payload["chunk_hash"] else stamp})
    result = lake.replace_partition(VECTOR_INDEX, shard, pa.Table.from_pylist(rows, VECTOR_INDEX.arrow_schema))

    expected = {r["point_id"]: r["chunk_hash"] for r in rows}
    missing = sorted(set(expected) - set(after))
    extra = sorted(set(after) - set(expected))
    wrong = sorted(pid for pid in set(expected) & set(after) if expected[pid] != after[pid])
    check = dg.AssetCheckResult(
        check_name="index_matches_table",
        passed=not (missing or extra or wrong),
        metadata={"points": len(after), "rows": len(expected), "missing": len(missing), "extra": len(extra),
                  "wrong_hash": len(wrong), "sample": dg.MetadataValue.json((missing + extra + wrong)[:10])},
    )
    return dg.MaterializeResult(
        metadata=table_metadata(
            VECTOR_INDEX, result, started,
            points=len(after),
            upserted=len(to_upsert),
            deleted=len(to_delete),
            unchanged=len(desired) - len(to_upsert),
            collection=index.collection,
            # The fingerprint this shard is now fully synced to: the sensor compares against it, so a
            # shard whose run failed half-way is requested again on the next tick.
            source_fingerprint=latest_fingerprint(context.instance, shard) or "",
            **index_settings(model, qdrant),
        ),
        check_results=[check],
        data_version=dg.DataVersion(digest(list(expected.items()))),
    )


SHARD_ASSETS = [raw_documents, chunks, embeddings, vector_index]


def purge_shard(shard: str, iceberg: IcebergResource, qdrant: QdrantResource) -> dict[str, int]:
    """Remove a vanished shard everywhere: its points first, then its rows in every table."""
    from rag_assets.tables import ALL_TABLES

    with qdrant.index().session() as session:
        deleted = {"points": session.delete_shard(shard)}
    lake = iceberg.lakehouse()
    for spec in ALL_TABLES:
        deleted[spec.name] = lake.delete_partition(spec, shard)
    return deleted
