"""The four shard-partitioned assets: raw_documents -> chunks -> embeddings -> vector_index.

Each materialization reads its upstream partition from Iceberg, writes its own partition in one
commit, and reports what it did as metadata. Timestamps of unchanged rows are carried over, so
re-running a partition reproduces the same rows (and commits nothing).
"""


import datetime as dt
import hashlib
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import EqualTo, In

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


def carried(previous: pa.Table, key: str, match: str, stamp: str) -> dict[str, tuple[str, dt.datetime]]:
    """key -> (match value, timestamp) from the partition's previous rows (read with just these columns)."""
    return dict(zip(previous[key].to_pylist(), zip(previous[match].to_pylist(), previous[stamp].to_pylist())))


def column_pairs(rows: pa.Table, key: str, value: str) -> dict:
    return dict(zip(rows[key].to_pylist(), rows[value].to_pylist()))


# Memory: every step streams its partition through in batches (documents, chunks, vectors) and writes it
# with `Lakehouse.writer`, so what a step holds grows only with its narrow per-row state (ids and hashes,
# ~100-300 B per document or chunk), never with the text or the vectors. See benchmarks/RESULTS.md.
DOCUMENT_BATCH = 256  # documents parsed before they are handed to the table writer
# Chunk texts sent to the model per call: ~4 MB of text and 6 MB of 384-d vectors on the CPU. A GPU gets
# 8x more per call, so that its one host sync per call and the table writes between calls stay rare.
EMBED_WINDOW = 4096
POINT_BATCH = 1024  # points built and upserted at a time

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
    old = lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "content_hash", "ingested_at", "source_uri", "source_size", "source_version"))
    previous = carried(old, "doc_id", "content_hash", "ingested_at")
    old_versions: dict[str, set[tuple]] = {}
    for uri, size, version in zip(*(old[c].to_pylist() for c in ("source_uri", "source_size", "source_version"))):
        old_versions.setdefault(uri, set()).add((size, version))
    del old
    previous_rejects: dict[str, list[dict]] = {}
    for r in lake.read_partition(QUARANTINE, shard).to_pylist():  # one small row per rejected input
        previous_rejects.setdefault(r["source_uri"], []).append(r)
    limit = source.max_document_mb * 1024 * 1024
    rejects, stamp, files_read = [], now(), 0
    written: dict[str, str] = {}  # doc_id -> content_hash of every document in the new partition

    def reject(uri: str, record: str, reason: str, detail: str) -> None:
        rejects.append({"shard": shard, "source_uri": uri, "record": record, "reason": reason, "detail": detail})

    to_read, unchanged = [], set()
    for f in listing.files:
        uri = src.uri(f.path)
        if f.rejected:
            reject(uri, "", "unreadable", f.rejected)
        elif f.size > limit:
            reject(uri, "", "too_large", f"{f.size} bytes > {source.max_document_mb} MiB limit")
        elif old_versions.get(uri) == {(f.size, f.version)}:
            unchanged.add(uri)
            rejects.extend(previous_rejects.get(uri, []))
        else:
            to_read.append(f)

    with lake.writer(RAW_DOCUMENTS, shard) as out:

        def add(rows: pa.Table | list[dict]) -> None:
            rows = pa.Table.from_pylist(rows, RAW_DOCUMENTS.arrow_schema) if isinstance(rows, list) else rows
            out.add(rows)
            written.update(column_pairs(rows, "doc_id", "content_hash"))

        if unchanged:  # copied over from the previous partition a batch at a time
            keep = pa.array(sorted(unchanged), pa.string())
            for batch in lake.partition_batches(RAW_DOCUMENTS, shard):
                add(batch.filter(pc.is_in(batch["source_uri"], value_set=keep)))
        pending: list[dict] = []
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
                pending.append(
                    {
                        "shard": shard, "doc_id": item.doc_id, "title": item.title, "text": item.text,
                        "metadata": item.metadata, "content_hash": item.content_hash, "source_uri": uri,
                        "source_size": f.size, "source_version": f.version,
                        "ingested_at": old_stamp if old_hash == item.content_hash else stamp,
                    }
                )
                if len(pending) >= DOCUMENT_BATCH:
                    add(pending)
                    pending = []
            del data
        add(pending)
        result = out.commit()
    lake.replace_partition(QUARANTINE, shard, pa.Table.from_pylist(rejects, QUARANTINE.arrow_schema))
    changed = sum(1 for doc_id, h in written.items() if previous.get(doc_id, (None,))[0] != h)
    if rejects:
        context.log.warning(f"{len(rejects)} inputs of shard {shard!r} quarantined: {dict(Counter(r['reason'] for r in rejects))}")
    return dg.MaterializeResult(
        metadata=table_metadata(
            RAW_DOCUMENTS, result, started,
            documents=len(written),
            new_or_changed_documents=changed,
            removed_documents=len(previous.keys() - written.keys()),
            quarantined=len(rejects),
            quarantine_reasons=dg.MetadataValue.json(dict(Counter(r["reason"] for r in rejects))),
            source_files=len(listing.files),
            source_files_read=files_read,
            source_bytes=listing.total_bytes,
            source_fingerprint=listing.fingerprint,
        ),
        data_version=dg.DataVersion(digest(list(written.items()))),
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
    # Same content and same chunker -> same chunks: such a document keeps its chunks without being split
    # again. The chunker's settings are part of every chunk hash, so one previous chunk tells whether
    # it changed.
    sample = next(lake.partition_batches(CHUNKS, shard, ("text", "chunk_hash")), None)
    same_chunker = sample is not None and chunker.chunk_hash(sample["text"][0].as_py()) == sample["chunk_hash"][0].as_py()
    del sample
    doc_hashes = column_pairs(lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "content_hash")), "doc_id", "content_hash")
    old = lake.read_partition(CHUNKS, shard, ("doc_id", "doc_hash")) if same_chunker else CHUNKS.arrow_schema.empty_table()
    reusable = {d for d, h in zip(old["doc_id"].to_pylist(), old["doc_hash"].to_pylist()) if doc_hashes.get(d) == h}
    del old, doc_hashes
    reused_metadata: dict[str, str] = {}  # doc_id -> the document's metadata now, for its kept chunks
    keys: list[tuple[str, str]] = []  # (chunk_id, chunk_hash) of every chunk written
    documents = split_docs = tokens = max_tokens = 0

    with lake.writer(CHUNKS, shard) as out:

        def add(rows: pa.Table) -> None:
            nonlocal tokens, max_tokens
            out.add(rows)
            keys.extend(zip(rows["chunk_id"].to_pylist(), rows["chunk_hash"].to_pylist()))
            tokens += pc.sum(rows["token_count"]).as_py() or 0
            max_tokens = max(max_tokens, pc.max(rows["token_count"]).as_py() or 0)

        for batch in lake.partition_batches(RAW_DOCUMENTS, shard, ("doc_id", "text", "metadata", "content_hash")):
            rows = []
            for doc in batch.to_pylist():
                documents += 1
                if doc["doc_id"] in reusable:
                    reused_metadata[doc["doc_id"]] = doc["metadata"]
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
            add(pa.Table.from_pylist(rows, CHUNKS.arrow_schema))
        if reused_metadata:  # kept chunks, copied from the previous partition with their document's metadata now
            keep = pa.array(sorted(reused_metadata), pa.string())
            for batch in lake.partition_batches(CHUNKS, shard):
                batch = batch.filter(pc.is_in(batch["doc_id"], value_set=keep))
                field = CHUNKS.arrow_schema.field("metadata")
                metadata = pa.array([reused_metadata[d] for d in batch["doc_id"].to_pylist()], field.type)
                add(batch.set_column(batch.schema.get_field_index("metadata"), field, metadata))
        result = out.commit()
    return dg.MaterializeResult(
        metadata=table_metadata(
            CHUNKS, result, started,
            documents=documents,
            documents_split=split_docs,
            chunks=len(keys),
            tokens=tokens,
            max_chunk_tokens=max_tokens,
            chunker=chunker.settings_key,
        ),
        data_version=dg.DataVersion(digest(keys)),
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
    wanted = lake.read_partition(CHUNKS, shard, ("chunk_id", "chunk_hash", "token_count"))  # no text: it is streamed below
    chunk_ids_of: dict[str, list[str]] = {}  # chunk_hash -> chunks with that text (a text can repeat)
    token_count: dict[str, int] = {}
    for cid, h, t in zip(*(wanted[c].to_pylist() for c in ("chunk_id", "chunk_hash", "token_count"))):
        chunk_ids_of.setdefault(h, []).append(cid)
        token_count[h] = t
    n_chunks = wanted.num_rows
    del wanted

    # Reuse: first this shard's previous rows, then other shards' rows, for the same (hash, model).
    same_model = EqualTo("model", model_key)
    own = EqualTo("shard", shard) & same_model
    from_own = set(lake.scan(EMBEDDINGS, own, ("chunk_hash",))["chunk_hash"].to_pylist()) & chunk_ids_of.keys()
    others = lake.scan(EMBEDDINGS, In("chunk_hash", chunk_ids_of.keys() - from_own) & same_model, ("chunk_hash",)) \
        if len(chunk_ids_of) > len(from_own) else EMBEDDINGS.arrow_schema.empty_table()
    from_others = set(others["chunk_hash"].to_pylist())
    to_embed = chunk_ids_of.keys() - from_own - from_others
    tokens = sum(token_count[h] for h in to_embed)
    del token_count, others

    remaining = set(chunk_ids_of)  # hashes whose rows are not written yet
    embed_seconds, embedded, stamp = 0.0, 0, now()
    cols = ("chunk_hash", "dim", "vector", "embedded_at")
    with lake.writer(EMBEDDINGS, shard) as out:

        def add(found: pa.Table) -> None:
            """Rows for every chunk of the shard whose hash `found` (chunk_hash, dim, vector, embedded_at) has."""
            take, chunk_ids = [], []
            for i, h in enumerate(found["chunk_hash"].to_pylist()):
                if h in remaining:
                    remaining.discard(h)
                    take.extend([i] * len(chunk_ids_of[h]))
                    chunk_ids.extend(chunk_ids_of[h])
            if take:
                rows = found.take(pa.array(take, pa.int64()))
                out.add(rows.append_column("shard", pa.array([shard] * len(take), pa.string()))
                        .append_column("chunk_id", pa.array(chunk_ids, pa.string()))
                        .append_column("model", pa.array([model_key] * len(take), pa.string())))

        for batch in lake.batches(EMBEDDINGS, own, cols):
            add(batch)
        for batch in lake.where_in_batches(EMBEDDINGS, "chunk_hash", from_others, cols, extra=same_model):
            add(batch)
        if to_embed:  # texts streamed from the chunks partition, a window at a time through the model
            embedder = model.embedder()
            window: dict[str, str] = {}
            window_size = EMBED_WINDOW * (8 if embedder.cuda else 1)

            def embed() -> None:
                nonlocal embed_seconds, embedded
                t0 = time.perf_counter()
                vectors = embedder.encode(list(window.values()))
                embed_seconds += time.perf_counter() - t0
                embedded += len(window)
                add(new_vectors(list(window), vectors, stamp))
                window.clear()
                context.log.info(f"embedded {embedded}/{len(to_embed)} chunks on {embedder.device}")

            for batch in lake.partition_batches(CHUNKS, shard, ("chunk_hash", "text")):
                for h, text in zip(batch["chunk_hash"].to_pylist(), batch["text"].to_pylist()):
                    if h in to_embed and h in remaining and h not in window:
                        window[h] = text
                        if len(window) >= window_size:
                            embed()
            if window:
                embed()
            context.log.info(f"embedded {embedded} chunks ({tokens} tokens) in {embed_seconds:.1f}s on {embedder.device}")
        result = out.commit()

    written = lake.read_partition(EMBEDDINGS, shard, ("chunk_id", "chunk_hash", "model"))
    have = {(c, h) for c, h, m in zip(*(written[k].to_pylist() for k in ("chunk_id", "chunk_hash", "model"))) if m == model_key}
    absent = [c for h, ids in chunk_ids_of.items() for c in ids if (c, h) not in have]
    check = dg.AssetCheckResult(
        check_name="all_chunks_embedded",
        passed=not absent and written.num_rows == n_chunks,
        metadata={"chunks": n_chunks, "embedded_rows": written.num_rows, "missing": len(absent),
                  "missing_sample": dg.MetadataValue.json(absent[:10])},
    )
    return dg.MaterializeResult(
        metadata=table_metadata(
            EMBEDDINGS, result, started,
            chunks=n_chunks,
            embedded=embedded,
            reused=n_chunks - embedded,  # chunks not sent to the model (incl. repeats of one text in this shard)
            reused_from_other_shards=len(from_others),
            tokens_embedded=tokens,
            embed_seconds=round(embed_seconds, 3),
            tokens_per_second=round(tokens / embed_seconds, 1) if embed_seconds else 0.0,
            model=model_key,
            device=model.embedder().device if embedded else "",
            # The GPU this run was pinned to by the GPU run launcher ("" = none, unset = not launched by it).
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        ),
        check_results=[check],
        data_version=dg.DataVersion(digest([(c, h, model_key) for h, ids in chunk_ids_of.items() for c in ids])),
    )


@dataclass(frozen=True)
class PointKey:
    chunk_id: str
    chunk_hash: str
    model: str
    dim: int


def shard_point_keys(lake: Lakehouse, shard: str) -> dict[str, PointKey]:
    """point id -> what the collection must hold for each chunk of `shard` (no vectors, no text)."""
    emb = lake.read_partition(EMBEDDINGS, shard, ("chunk_id", "chunk_hash", "model", "dim"))
    chunk_ids = set(lake.read_partition(CHUNKS, shard, ("chunk_id",))["chunk_id"].to_pylist())
    keys = {point_id_for(c): PointKey(c, h, m, d) for c, h, m, d in zip(*(emb[k].to_pylist() for k in emb.column_names))}
    if len(keys) != emb.num_rows or any(k.chunk_id not in chunk_ids for k in keys.values()):
        raise dg.Failure(f"embeddings of shard {shard!r} do not match its chunks; materialize chunks and embeddings first")
    return keys


def point_batches(lake: Lakehouse, shard: str, keys: dict[str, PointKey], size: int = POINT_BATCH) -> Iterator[list[Point]]:
    """The points for `keys` (a selection of `shard_point_keys`), built from the Iceberg tables `size` at
    a time. Vectors and texts sit in different tables in different orders, so the wanted vectors are
    first spilled to a temporary file (float32, one row each) and read back by row while the chunk texts
    stream by: memory stays at one batch however many points are rebuilt."""
    if not keys:
        return
    by_chunk = {k.chunk_id: pid for pid, k in keys.items()}
    dim = next(iter(keys.values())).dim
    row_of: dict[str, int] = {}  # chunk_id -> row in the spill file
    with tempfile.TemporaryFile(prefix="rag-vectors-") as spill:
        wanted = pa.array(sorted(by_chunk), pa.string())
        for batch in lake.partition_batches(EMBEDDINGS, shard, ("chunk_id", "vector")):
            batch = batch.filter(pc.is_in(batch["chunk_id"], value_set=wanted))
            values = batch["vector"].combine_chunks().flatten().to_numpy()
            if values.size != batch.num_rows * dim:  # rows are found by position: every vector must be `dim` long
                raise dg.Failure(f"embeddings of shard {shard!r} are not all {dim}-d; materialize embeddings first")
            for cid in batch["chunk_id"].to_pylist():
                row_of[cid] = len(row_of)
            spill.write(np.ascontiguousarray(values, dtype=np.float32).tobytes())
        spill.flush()
        fd, row_bytes = spill.fileno(), dim * 4
        docs = lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "title", "source_uri"))
        doc_info = dict(zip(docs["doc_id"].to_pylist(), zip(docs["title"].to_pylist(), docs["source_uri"].to_pylist())))
        del docs
        points: list[Point] = []
        for batch in lake.partition_batches(CHUNKS, shard, ("chunk_id", "doc_id", "chunk_index", "text")):
            for r in batch.filter(pc.is_in(batch["chunk_id"], value_set=wanted)).to_pylist():
                pid = by_chunk[r["chunk_id"]]
                key = keys[pid]
                vector = np.frombuffer(os.pread(fd, row_bytes, row_of[r["chunk_id"]] * row_bytes), dtype=np.float32)
                title, source_uri = doc_info.get(r["doc_id"], (None, None))
                points.append(Point(pid, vector, {
                    "shard": shard, "model": key.model, "doc_id": r["doc_id"], "chunk_id": r["chunk_id"],
                    "chunk_index": r["chunk_index"], "chunk_hash": key.chunk_hash, "title": title, "text": r["text"],
                    "source_uri": source_uri,
                }))
                if len(points) >= size:
                    yield points
                    points = []
        if points:
            yield points


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
    desired = shard_point_keys(lake, shard)
    stale = sum(1 for k in desired.values() if k.model != model_key)
    if stale:
        raise dg.Failure(f"{stale} embeddings of shard {shard!r} are not from {model_key}; materialize embeddings first")

    index = qdrant.index()
    with index.session() as session:
        if desired:
            session.ensure_collection(next(iter(desired.values())).dim)
            foreign = session.count(other_model=model_key)
            if foreign:
                raise CollectionMismatch(
                    f"collection {index.collection!r} holds {foreign} points of another model; a model change is a "
                    "full re-embed into a new collection: set RAG_QDRANT_COLLECTION"
                )
        live = session.shard_points(shard)
        to_upsert = {pid: k for pid, k in desired.items() if live.get(pid) != k.chunk_hash}
        to_delete = sorted(live.keys() - desired.keys())
        for points in point_batches(lake, shard, to_upsert):
            session.upsert(points)
        session.delete(to_delete)
        after = session.shard_points(shard)

    previous = carried(
        lake.read_partition(VECTOR_INDEX, shard, ("point_id", "chunk_hash", "synced_at")), "point_id", "chunk_hash", "synced_at"
    )
    stamp = now()
    with lake.writer(VECTOR_INDEX, shard) as out:
        rows = []
        for pid, k in desired.items():
            old_hash, old_stamp = previous.get(pid, (None, None))
            rows.append({"shard": shard, "chunk_id": k.chunk_id, "point_id": pid, "chunk_hash": k.chunk_hash,
                         "collection": index.collection, "synced_at": old_stamp if old_hash == k.chunk_hash else stamp})
            if len(rows) >= POINT_BATCH:
                out.add(rows)
                rows = []
        out.add(rows)
        result = out.commit()

    missing = sorted(desired.keys() - after.keys())
    extra = sorted(after.keys() - desired.keys())
    wrong = sorted(pid for pid in desired.keys() & after.keys() if desired[pid].chunk_hash != after[pid])
    check = dg.AssetCheckResult(
        check_name="index_matches_table",
        passed=not (missing or extra or wrong),
        metadata={"points": len(after), "rows": len(desired), "missing": len(missing), "extra": len(extra),
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
        data_version=dg.DataVersion(digest([(pid, k.chunk_hash) for pid, k in desired.items()])),
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
