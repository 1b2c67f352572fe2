"""The four shard-partitioned assets: raw_documents -> chunks -> embeddings -> vector_index.

Each body is a recipe of named steps (`rag_assets/steps/`, one module per stage, where each reuse rule
is written down): read what the previous partition allows to keep, stream the rest through, write the
partition in one commit, and report what was done. Timestamps of unchanged rows are carried over, so
re-running a partition reproduces the same rows (and commits nothing).
"""

import functools
import os
import time

import dagster as dg
import polars as pl

from rag_assets import aliases, deletion_guard, progress, shard_state
from rag_assets.defs import checks
from rag_assets.defs.partitions import shards
from rag_assets.defs.resources import IcebergResource, ModelResource, QdrantResource, SourceResource, index_identity
from rag_assets.launcher import GPU_POOL
from rag_assets.sparse import sparse_of
from rag_assets.runs import GPU_TAG
from rag_assets.steps import chunks as chunking, documents, points, vectors
from rag_assets.steps.rows import KeptColumns, frame_digest, keep_stamps, now, stacked, table_metadata
from rag_assets.tables import CHUNKS, EMBEDDINGS, QUARANTINE, RAW_DOCUMENTS, VECTOR_INDEX
from rag_assets.vector_store import VectorStore

GROUP = "rag"
OWNERS = ["team:rag"]  # shown in the UI's catalog; the team that answers for the index


def shard_asset(**kwargs):
    """@asset partitioned by source shard, in the project's group, whose step failure says what went wrong:
    an exception from the body becomes a `dg.Failure` described by its innermost cause ("PermissionError:
    ..."), so the UI leads with it rather than Dagster's "Error occurred while executing op"."""

    def decorate(body):
        @functools.wraps(body)  # (Dagster reads the body's parameters through __wrapped__)
        def asset_body(context: dg.AssetExecutionContext, *args, **kw):
            progress.report(context.partition_key, body.__name__)  # the CLI's bar shows the step
            try:
                return body(context, *args, **kw)
            except (dg.Failure, dg.RetryRequested):
                raise
            except Exception as exc:
                raise dg.Failure(description=innermost_cause(exc)) from exc

        return dg.asset(partitions_def=shards, group_name=GROUP, owners=OWNERS, **kwargs)(asset_body)

    return decorate


def innermost_cause(exc: BaseException) -> str:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return f"{type(exc).__name__}: {exc}"


@shard_asset(
    kinds={"iceberg", "python"},
    description="Documents read from one source shard, with content hashes; rejected inputs go to `quarantine`.",
)
def raw_documents(context: dg.AssetExecutionContext, source: SourceResource, iceberg: IcebergResource) -> dg.MaterializeResult:
    started, shard = time.perf_counter(), context.partition_key
    src = source.open()
    listing = src.list_shard(shard)
    if not listing.files and not src.has_shard(shard):
        raise dg.Failure(f"shard {shard!r} is not in the source {source.location}; a sync removes it")
    lake = iceberg.lakehouse()
    previous = documents.read_previous(lake, shard)
    plan = documents.plan_reads(src, listing, previous, source.max_document_mb)

    def stamped(rows):  # unchanged documents keep their ingested_at
        return keep_stamps(pl.from_arrow(rows), previous.documents, "doc_id", "content_hash", "ingested_at")

    with lake.writer(RAW_DOCUMENTS, shard) as out:
        written = KeptColumns(out, ("doc_id", "content_hash"), RAW_DOCUMENTS)
        for rows in documents.copied_documents(lake, shard, plan.unchanged):
            written.add(stamped(rows))
        for rows in documents.read_documents(src, plan.to_read, source.fields, now(), plan.quarantine, source.max_document_mb):
            written.add(stamped(rows))
        lost, points = documents.lost_points(lake, shard, previous.documents, written.frame())
        deletion_guard.guard_shard(context, listing.fingerprint, lost, points, source.max_delete_fraction)  # before any write
        result = out.commit()
    lake.replace_partition(QUARANTINE, shard, plan.quarantine.table())
    if plan.quarantine.rows:
        context.log.warning(f"{len(plan.quarantine.rows)} inputs of shard {shard!r} quarantined: {plan.quarantine.reasons()}")
    docs = written.frame()
    return dg.MaterializeResult(
        metadata=table_metadata(
            RAW_DOCUMENTS, result, started,
            **documents.document_counts(docs, previous.documents),
            quarantined=len(plan.quarantine.rows),
            quarantine_reasons=dg.MetadataValue.json(plan.quarantine.reasons()),
            quarantine_sample=dg.MetadataValue.md(plan.quarantine.sample_markdown()),
            source_files=len(listing.files),
            source_files_read=len(plan.to_read),
            source_bytes=listing.total_bytes,
            source_fingerprint=listing.fingerprint,
        ),
        data_version=dg.DataVersion(frame_digest(docs)),
    )


@shard_asset(
    kinds={"iceberg", "python"},
    deps=[raw_documents],
    description="Token-aware chunks of each document (the model's tokenizer; never longer than the model reads).",
)
def chunks(context: dg.AssetExecutionContext, iceberg: IcebergResource, model: ModelResource) -> dg.MaterializeResult:
    started, shard = time.perf_counter(), context.partition_key
    lake = iceberg.lakehouse()
    chunker, encoder = model.chunker(), model.sparse_encoder()
    plan = chunking.read_chunk_plan(lake, shard, chunker)
    kept_metadata: list[pl.DataFrame] = []  # doc_id, metadata now, of the documents that keep their chunks
    sparse = chunking.SparseStats()

    with lake.writer(CHUNKS, shard) as out:
        written = KeptColumns(out, ("chunk_id", "chunk_hash", "token_count"), CHUNKS)
        for batch in lake.partition_batches(RAW_DOCUMENTS, shard, ("doc_id", "text", "metadata", "content_hash")):
            kept, to_split = plan.split_batch(batch)
            kept_metadata.append(kept)
            new_chunks = chunking.chunk_rows(shard, to_split, chunker, encoder)
            sparse.encoded += new_chunks.num_rows if encoder else 0
            written.add(new_chunks)
        kept_now = stacked(kept_metadata, {"doc_id": pl.String, "metadata": pl.String})
        for rows in chunking.kept_chunks(lake, shard, kept_now, encoder, sparse):
            written.add(rows)
        result = out.commit()
    keys = written.frame()
    return dg.MaterializeResult(
        metadata=table_metadata(
            CHUNKS, result, started,
            documents=plan.documents,
            documents_split=plan.to_split,
            **chunking.chunk_counts(keys),
            chunker=chunker.settings_key,
            sparse_encoder=encoder.key if encoder else "none",
            sparse_encoded=sparse.encoded,  # chunks whose BM25 vector was computed; the others were copied
        ),
        data_version=dg.DataVersion(frame_digest(keys.select("chunk_id", "chunk_hash"))),
    )


@shard_asset(
    kinds={"iceberg", "pytorch"},
    deps=[chunks],
    op_tags={GPU_TAG: "true"},  # the GPU run launcher routes runs with this step to GPU capacity
    pool=GPU_POOL,
    check_specs=[checks.ALL_CHUNKS_EMBEDDED],
    description="One normalized vector per chunk and model; a (chunk_hash, model) already in the table is reused, never re-embedded.",
)
def embeddings(context: dg.AssetExecutionContext, iceberg: IcebergResource, model: ModelResource) -> dg.MaterializeResult:
    started, shard = time.perf_counter(), context.partition_key
    lake = iceberg.lakehouse()
    model_key = model.info().key
    wanted = pl.from_arrow(lake.read_partition(CHUNKS, shard, ("chunk_id", "chunk_hash", "token_count")))
    store = VectorStore(lake)
    plan = vectors.read_vector_plan(lake, store, shard, model_key, wanted)
    stats = vectors.EmbedStats()

    with lake.writer(EMBEDDINGS, shard) as out, store.appender(model_key) as new_in_store:
        rows = vectors.VectorRows(out, shard, model_key, wanted)
        for found in vectors.reused_vectors(lake, store, shard, model_key, plan):
            rows.add(found)
        if plan.to_embed.height:  # texts streamed from the chunks partition, a window at a time
            embedder = model.embedder()
            windows = vectors.texts_to_embed(lake, shard, plan.to_embed, vectors.window_size(embedder))
            for found in vectors.embed_windows(embedder, windows, now(), stats, plan.to_embed.height, context.log, shard):
                rows.add(found)
                new_in_store.add(found)
            context.log.info(f"embedded {stats.chunks} chunks ({plan.tokens} tokens) in {stats.seconds:.1f}s on {embedder.device}")
        new_in_store.commit()  # first: a vector the shard's rows hold is always in the store
        result = out.commit()

    written = pl.from_arrow(lake.read_partition(EMBEDDINGS, shard, ("chunk_id", "chunk_hash", "model")))
    return dg.MaterializeResult(
        metadata=table_metadata(
            EMBEDDINGS, result, started,
            chunks=wanted.height,
            embedded=stats.chunks,
            reused=wanted.height - stats.chunks,  # chunks not sent to the model (incl. repeats of one text in this shard)
            reused_from_store=plan.from_store.hashes.height,  # vectors another shard (or an earlier version) embedded
            store_files_read=plan.from_store.files_read,  # what the lookup cost: flat in the number of shards
            tokens_embedded=plan.tokens,
            embed_seconds=round(stats.seconds, 3),
            tokens_per_second=round(plan.tokens / stats.seconds, 1) if stats.seconds else 0.0,
            model=model_key,
            device=model.embedder().device if stats.chunks else "",
            # The GPU this run was pinned to by the GPU run launcher ("" = none, unset = not launched by it).
            cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        ),
        check_results=[checks.all_chunks_embedded(shard, wanted, written, model_key)],
        data_version=dg.DataVersion(frame_digest(wanted.select("chunk_id", "chunk_hash", model=pl.lit(model_key)))),
    )


@shard_asset(
    kinds={"iceberg", "qdrant"},
    # Points are built from the vectors, the chunk texts and the document titles: all three are read.
    deps=[embeddings, chunks, raw_documents],
    check_specs=[checks.INDEX_MATCHES_TABLE],
    description="What the live Qdrant collection holds for the shard; the collection is synced to it (upsert new/changed, delete vanished).",
)
def vector_index(
    context: dg.AssetExecutionContext, iceberg: IcebergResource, qdrant: QdrantResource, model: ModelResource
) -> dg.MaterializeResult:
    started, shard = time.perf_counter(), context.partition_key
    lake = iceberg.lakehouse()
    model_key = model.info().key
    desired = points.shard_point_keys(lake, shard)
    points.require_model(desired, model_key, shard)

    identity = index_identity(model, qdrant)
    try:  # the collection the alias serves for this model, chunker and quantization (aliases.py)
        index = aliases.sync_target(qdrant.alias_index(), identity)
    except aliases.IdentityConflict as exc:
        raise dg.Failure(str(exc)) from exc
    with index.session() as session:
        points.prepare_collection(session, index.collection, desired, model_key, identity)
        aliases.publish(qdrant.alias_index(), index.collection)  # a first sync points the alias at it, before any upsert
        to_upsert, to_delete = points.points_to_sync(desired, session.shard_points(shard))
        for batch in points.point_batches(lake, shard, to_upsert, sparse_of(identity)):
            session.upsert(batch)
        session.delete(to_delete.to_list())
        live = session.shard_points(shard)

    rows = points.index_rows(desired, points.read_index_rows(lake, shard), shard, index.collection, now())
    with lake.writer(VECTOR_INDEX, shard) as out:
        for part in rows.iter_slices(points.POINT_BATCH):
            out.add(part.to_arrow())
        result = out.commit()
    return dg.MaterializeResult(
        metadata=table_metadata(
            VECTOR_INDEX, result, started,
            points=live.height,
            upserted=to_upsert.height,
            deleted=to_delete.len(),
            unchanged=desired.height - to_upsert.height,
            collection=index.collection,  # the physical collection; `alias` is what applications query
            alias=qdrant.collection,
            # The state the sensor compares against (the fingerprint this shard is now fully synced to, and
            # the index settings): a shard whose run failed half-way is requested again on the next tick.
            **shard_state.synced_state(context.instance, shard, shard_state.index_settings(model, qdrant)),
        ),
        check_results=[checks.index_matches_table(shard, desired, live)],
        data_version=dg.DataVersion(frame_digest(desired.select("point_id", "chunk_hash"))),
    )


SHARD_ASSETS = [raw_documents, chunks, embeddings, vector_index]
