"""The four shard-partitioned assets: raw_documents -> chunks -> embeddings -> vector_index.

Each materialization reads its upstream partition from Iceberg, writes its own partition in one
commit, and reports what it did as metadata. Timestamps of unchanged rows are carried over, so
re-running a partition reproduces the same rows (and commits nothing).
"""


import datetime as dt
import hashlib
import os
import time
from collections import Counter

import dagster as dg
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.expressions import EqualTo, In

from rag_assets.launcher import GPU_POOL, GPU_TAG
from rag_assets.index import CollectionMismatch
from rag_assets.parsing import Document, parse_file
from rag_assets.points import POINT_BATCH, mismatches, point_batches, points_to_sync, shard_point_keys
from rag_assets.chunking import chunk_id_for
from rag_assets.resources import IcebergResource, ModelResource, QdrantResource, SourceResource
from rag_assets.tables import CHUNKS, EMBEDDINGS, QUARANTINE, RAW_DOCUMENTS, VECTOR_INDEX, TableSpec, WriteResult

shards = dg.DynamicPartitionsDefinition(name="shards")
GROUP = "rag"


def shard_asset(**kwargs):
    """@asset partitioned by source shard, in the project's group."""
    return dg.asset(partitions_def=shards, group_name=GROUP, **kwargs)


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def frame_digest(frame: pl.DataFrame) -> str:
    """A data version: sha256 over the frame's rows in sorted order, each row's values joined by NUL and
    ended by a newline. The same value the earlier `sorted(rows)` digest gave (UTF-8 byte order is
    code-point order), so data versions recorded before stay valid."""
    h = hashlib.sha256()
    if frame.height:
        lines = frame.sort(frame.columns).select(pl.concat_str(pl.all().cast(pl.String), separator="\0"))
        for part in lines.iter_slices(65536):
            h.update(("\n".join(part.to_series().to_list()) + "\n").encode())
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


def stacked(frames: list[pl.DataFrame], schema: dict) -> pl.DataFrame:
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


def keep_stamps(rows: pl.DataFrame, previous: pl.DataFrame, key: str, match: str, stamp: str) -> pl.DataFrame:
    """`rows` with the previous row's `stamp` wherever the row with the same `key` had the same `match`
    value: unchanged rows keep their timestamps, so a re-run writes the same rows."""
    joined = rows.join(previous.select(key, match, stamp), on=key, how="left", suffix="_old", maintain_order="left")
    unchanged = pl.col(f"{match}_old") == pl.col(match)
    return joined.with_columns(pl.when(unchanged).then(pl.col(f"{stamp}_old")).otherwise(pl.col(stamp)).alias(stamp)).select(rows.columns)


# Memory: every step streams its partition through in batches (documents, chunks, vectors) and writes it
# with `Lakehouse.writer`, so what a step holds grows only with its narrow per-row state (ids and hashes,
# in polars frames), never with the text or the vectors. See benchmarks/RESULTS.md, "Memory".
DOCUMENT_BATCH = 256  # documents parsed before they are handed to the table writer
# Chunk texts sent to the model per call: ~4 MB of text and 6 MB of 384-d vectors on the CPU. A GPU gets
# 8x more per call, so that its one host sync per call and the table writes between calls stay rare.
EMBED_WINDOW = 4096

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
    old = pl.from_arrow(lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "content_hash", "ingested_at", "source_uri", "source_size", "source_version")))
    previous = old.select("doc_id", "content_hash", "ingested_at")
    old_versions: dict[str, set[tuple]] = {}  # per file, not per document
    for uri, size, version in old.select("source_uri", "source_size", "source_version").unique().iter_rows():
        old_versions.setdefault(uri, set()).add((size, version))
    del old
    previous_rejects: dict[str, list[dict]] = {}
    for r in lake.read_partition(QUARANTINE, shard).to_pylist():  # one small row per rejected input
        previous_rejects.setdefault(r["source_uri"], []).append(r)
    limit = source.max_document_mb * 1024 * 1024
    rejects, stamp, files_read = [], now(), 0
    written: list[pl.DataFrame] = []  # doc_id, content_hash of every document in the new partition

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
            rows = pl.from_arrow(pa.Table.from_pylist(rows, RAW_DOCUMENTS.arrow_schema) if isinstance(rows, list) else rows)
            out.add(keep_stamps(rows, previous, "doc_id", "content_hash", "ingested_at").to_arrow())
            written.append(rows.select("doc_id", "content_hash"))

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
                pending.append(
                    {
                        "shard": shard, "doc_id": item.doc_id, "title": item.title, "text": item.text,
                        "metadata": item.metadata, "content_hash": item.content_hash, "source_uri": uri,
                        "source_size": f.size, "source_version": f.version,
                        "ingested_at": stamp,  # or the previous row's, when the content is the same
                    }
                )
                if len(pending) >= DOCUMENT_BATCH:
                    add(pending)
                    pending = []
            del data
        add(pending)
        result = out.commit()
    lake.replace_partition(QUARANTINE, shard, pa.Table.from_pylist(rejects, QUARANTINE.arrow_schema))
    documents = pl.concat(written)
    changed = documents.join(previous, on=["doc_id", "content_hash"], how="anti").height
    if rejects:
        context.log.warning(f"{len(rejects)} inputs of shard {shard!r} quarantined: {dict(Counter(r['reason'] for r in rejects))}")
    return dg.MaterializeResult(
        metadata=table_metadata(
            RAW_DOCUMENTS, result, started,
            documents=documents.height,
            new_or_changed_documents=changed,
            removed_documents=previous.join(documents, on="doc_id", how="anti").height,
            quarantined=len(rejects),
            quarantine_reasons=dg.MetadataValue.json(dict(Counter(r["reason"] for r in rejects))),
            source_files=len(listing.files),
            source_files_read=files_read,
            source_bytes=listing.total_bytes,
            source_fingerprint=listing.fingerprint,
        ),
        data_version=dg.DataVersion(frame_digest(documents)),
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
    docs = pl.from_arrow(lake.read_partition(RAW_DOCUMENTS, shard, ("doc_id", "content_hash")))
    old = pl.from_arrow(lake.read_partition(CHUNKS, shard, ("doc_id", "doc_hash")) if same_chunker else CHUNKS.arrow_schema.empty_table())
    reusable = docs.join(old.unique().rename({"doc_hash": "content_hash"}), on=["doc_id", "content_hash"], how="semi").select("doc_id")
    del old, docs
    reused_metadata: list[pl.DataFrame] = []  # doc_id, the document's metadata now, for its kept chunks
    keys: list[pl.DataFrame] = []  # chunk_id, chunk_hash of every chunk written
    documents = split_docs = tokens = max_tokens = 0

    with lake.writer(CHUNKS, shard) as out:

        def add(rows: pa.Table) -> None:
            nonlocal tokens, max_tokens
            out.add(rows)
            keys.append(pl.from_arrow(rows.select(["chunk_id", "chunk_hash"])))
            tokens += pc.sum(rows["token_count"]).as_py() or 0
            max_tokens = max(max_tokens, pc.max(rows["token_count"]).as_py() or 0)

        for batch in lake.partition_batches(RAW_DOCUMENTS, shard, ("doc_id", "text", "metadata", "content_hash")):
            documents += batch.num_rows
            kept = pl.from_arrow(batch.select(["doc_id", "metadata"])).join(reusable, on="doc_id", how="semi")
            reused_metadata.append(kept)
            batch = batch.filter(pc.invert(pc.is_in(batch["doc_id"], value_set=kept["doc_id"].to_arrow())))
            rows = []
            for doc in batch.to_pylist():
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
        metadata_now = stacked(reused_metadata, {"doc_id": pl.String, "metadata": pl.String})
        if metadata_now.height:  # kept chunks, copied from the previous partition with their document's metadata now
            for batch in lake.partition_batches(CHUNKS, shard):
                batch = pl.from_arrow(batch).join(metadata_now, on="doc_id", how="inner", suffix="_now", maintain_order="left")
                add(batch.with_columns(metadata=pl.col("metadata_now")).drop("metadata_now").to_arrow())
        result = out.commit()
    written = stacked(keys, {"chunk_id": pl.String, "chunk_hash": pl.String})
    return dg.MaterializeResult(
        metadata=table_metadata(
            CHUNKS, result, started,
            documents=documents,
            documents_split=split_docs,
            chunks=written.height,
            tokens=tokens,
            max_chunk_tokens=max_tokens,
            chunker=chunker.settings_key,
        ),
        data_version=dg.DataVersion(frame_digest(written)),
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
    # Every chunk's id and hash, without its text (streamed below). A text can repeat, so several chunks
    # can share one hash and one vector.
    wanted = pl.from_arrow(lake.read_partition(CHUNKS, shard, ("chunk_id", "chunk_hash", "token_count")))
    hashes = wanted.group_by("chunk_hash").agg(pl.col("token_count").first())

    # Reuse: first this shard's previous rows, then other shards' rows, for the same (hash, model).
    same_model = EqualTo("model", model_key)
    own = EqualTo("shard", shard) & same_model
    not_own = hashes.join(pl.from_arrow(lake.scan(EMBEDDINGS, own, ("chunk_hash",))), on="chunk_hash", how="anti")
    # Other shards' hashes stream past and are matched by a join (an `In` filter would hold every hash of
    # a new shard as Python objects; random hashes prune no files either way). Each reused hash is then
    # read from one shard only (the first by name), so the vectors are read from the few partitions that
    # hold them, not from every file of the table.
    from_others = stacked(
        [pl.from_arrow(b).join(not_own, on="chunk_hash", how="semi") for b in lake.batches(EMBEDDINGS, same_model, ("chunk_hash", "shard"))]
        if not_own.height else [], {"chunk_hash": pl.String, "shard": pl.String},
    ).group_by("chunk_hash").agg(pl.col("shard").min())
    to_embed = not_own.join(from_others, on="chunk_hash", how="anti")
    tokens = int(to_embed["token_count"].sum())
    del not_own

    pending = hashes.select("chunk_hash")  # hashes whose rows are not written yet
    chunk_ids = wanted.select("chunk_hash", "chunk_id")
    embed_seconds, embedded, stamp = 0.0, 0, now()
    cols = ("chunk_hash", "dim", "vector", "embedded_at")
    with lake.writer(EMBEDDINGS, shard) as out:

        def add(found: pa.Table) -> None:
            """Rows for every chunk of the shard whose hash `found` (chunk_hash, dim, vector, embedded_at) has."""
            nonlocal pending
            first = first_rows(found, pending)
            if first.is_empty():
                return
            pending = pending.join(first, on="chunk_hash", how="anti")
            rows = first.join(chunk_ids, on="chunk_hash").sort("i", "chunk_id")
            n = rows.height
            out.add(found.take(rows["i"].to_arrow())
                    .append_column("shard", pa.array([shard] * n, pa.string()))
                    .append_column("chunk_id", rows["chunk_id"].to_arrow().cast(pa.string()))
                    .append_column("model", pa.array([model_key] * n, pa.string())))

        for batch in lake.batches(EMBEDDINGS, own, cols):
            add(batch)
        sources = from_others["shard"].unique().sort().to_list()
        for batch in lake.where_in_batches(EMBEDDINGS, "chunk_hash", from_others["chunk_hash"].to_list(), cols,
                                           extra=same_model & In("shard", sources)):
            add(batch)
        if to_embed.height:  # texts streamed from the chunks partition, a window at a time through the model
            embedder = model.embedder()
            window_size = EMBED_WINDOW * (8 if embedder.cuda else 1)
            todo = to_embed.select("chunk_hash")

            def embed(window: pa.Table) -> None:
                nonlocal embed_seconds, embedded
                t0 = time.perf_counter()
                vectors = embedder.encode(window["text"].to_pylist())
                embed_seconds += time.perf_counter() - t0
                embedded += window.num_rows
                add(new_vectors(window["chunk_hash"].to_pylist(), vectors, stamp))
                context.log.info(f"embedded {embedded}/{to_embed.height} chunks on {embedder.device}")

            window = CHUNKS.arrow_schema.empty_table().select(["chunk_hash", "text"])  # texts stay in Arrow
            for batch in lake.partition_batches(CHUNKS, shard, ("chunk_hash", "text")):
                fresh = first_rows(batch, todo)
                todo = todo.join(fresh, on="chunk_hash", how="anti")
                window = pa.concat_tables([window, batch.take(fresh["i"].to_arrow())])
                while window.num_rows >= window_size:
                    embed(window.slice(0, window_size))
                    window = window.slice(window_size)
            if window.num_rows:
                embed(window)
            context.log.info(f"embedded {embedded} chunks ({tokens} tokens) in {embed_seconds:.1f}s on {embedder.device}")
        result = out.commit()

    written = pl.from_arrow(lake.read_partition(EMBEDDINGS, shard, ("chunk_id", "chunk_hash", "model")))
    absent = wanted.join(written.filter(pl.col("model") == model_key), on=["chunk_id", "chunk_hash"], how="anti")["chunk_id"]
    check = dg.AssetCheckResult(
        check_name="all_chunks_embedded",
        passed=absent.is_empty() and written.height == wanted.height,
        metadata={"chunks": wanted.height, "embedded_rows": written.height, "missing": absent.len(),
                  "missing_sample": dg.MetadataValue.json(absent.head(10).to_list())},
    )
    return dg.MaterializeResult(
        metadata=table_metadata(
            EMBEDDINGS, result, started,
            chunks=wanted.height,
            embedded=embedded,
            reused=wanted.height - embedded,  # chunks not sent to the model (incl. repeats of one text in this shard)
            reused_from_other_shards=from_others.height,
            reuse_source_shards=from_others["shard"].n_unique(),  # partitions those vectors were read from
            tokens_embedded=tokens,
            embed_seconds=round(embed_seconds, 3),
            tokens_per_second=round(tokens / embed_seconds, 1) if embed_seconds else 0.0,
            model=model_key,
            device=model.embedder().device if embedded else "",
            # The GPU this run was pinned to by the GPU run launcher ("" = none, unset = not launched by it).
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        ),
        check_results=[check],
        data_version=dg.DataVersion(frame_digest(chunk_ids.select("chunk_id", "chunk_hash", model=pl.lit(model_key)))),
    )


def first_rows(rows: pa.Table, keep: pl.DataFrame) -> pl.DataFrame:
    """chunk_hash, i (row number) of the first row of each chunk_hash in `rows` whose hash is in `keep`, in order."""
    hashes = pl.DataFrame({"chunk_hash": pl.from_arrow(rows["chunk_hash"]), "i": np.arange(rows.num_rows)})
    return hashes.unique("chunk_hash", keep="first", maintain_order=True).join(keep, on="chunk_hash", how="semi", maintain_order="left")


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
    stale = desired.filter(pl.col("model") != model_key).height
    if stale:
        raise dg.Failure(f"{stale} embeddings of shard {shard!r} are not from {model_key}; materialize embeddings first")

    index = qdrant.index()
    with index.session() as session:
        if desired.height:
            session.ensure_collection(desired["dim"][0])
            foreign = session.count(other_model=model_key)
            if foreign:
                raise CollectionMismatch(
                    f"collection {index.collection!r} holds {foreign} points of another model; a model change is a "
                    "full re-embed into a new collection: set RAG_QDRANT_COLLECTION"
                )
        to_upsert, to_delete = points_to_sync(desired, session.shard_points(shard))
        for points in point_batches(lake, shard, to_upsert):
            session.upsert(points)
        session.delete(to_delete.to_list())
        after = session.shard_points(shard)

    # Rows of unchanged points keep their synced_at, so a re-run writes the same rows (and commits nothing).
    previous = pl.from_arrow(lake.read_partition(VECTOR_INDEX, shard, ("point_id", "chunk_hash", "synced_at")))
    rows = desired.select(
        shard=pl.lit(shard), chunk_id="chunk_id", point_id="point_id", chunk_hash="chunk_hash",
        collection=pl.lit(index.collection), synced_at=pl.lit(now()),
    )
    rows = keep_stamps(rows, previous, "point_id", "chunk_hash", "synced_at")
    with lake.writer(VECTOR_INDEX, shard) as out:
        for part in rows.iter_slices(POINT_BATCH):
            out.add(part.to_arrow())
        result = out.commit()

    wrong = mismatches(desired, after)
    check = dg.AssetCheckResult(
        check_name="index_matches_table",
        passed=not any(wrong.values()),
        metadata={"points": after.height, "rows": desired.height, **{k: len(v) for k, v in wrong.items()},
                  "sample": dg.MetadataValue.json([p for v in wrong.values() for p in v][:10])},
    )
    return dg.MaterializeResult(
        metadata=table_metadata(
            VECTOR_INDEX, result, started,
            points=after.height,
            upserted=to_upsert.height,
            deleted=to_delete.len(),
            unchanged=desired.height - to_upsert.height,
            collection=index.collection,
            # The fingerprint this shard is now fully synced to: the sensor compares against it, so a
            # shard whose run failed half-way is requested again on the next tick.
            source_fingerprint=latest_fingerprint(context.instance, shard) or "",
            **index_settings(model, qdrant),
        ),
        check_results=[check],
        data_version=dg.DataVersion(frame_digest(desired.select("point_id", "chunk_hash"))),
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
