"""Reconciliation: make the live collection hold exactly what `vector_index` says, and report the repairs.

Drift happens outside the pipeline's control (a point deleted by hand, a restored snapshot, a crash
between the index write and the table commit, a shard removed while its removal failed). Every
point the table lists is checked by id and chunk hash; missing or stale points are rewritten from
the Iceberg tables (no model call), points the table does not list are deleted, including shards
the table no longer knows at all. Shards with a run in flight are skipped: that run syncs them.
"""


import polars as pl

from rag_assets.index import LIVE_POINTS
from rag_assets.sparse import sparse_of
from rag_assets.steps.points import ShardMismatch, mismatches, point_batches, shard_point_keys
from rag_assets.tables import VECTOR_INDEX


def reconcile_index(iceberg, qdrant, busy: set[str], log) -> dict:
    """Repair drift between `vector_index` and the live collection; returns per-shard repairs and totals.
    `iceberg` and `qdrant` are the resources; `busy` is `runs.busy_shards` (those are skipped)."""
    lake = iceberg.lakehouse()
    index = qdrant.index()
    # Rows name the physical collection they were synced into; those from before aliases name the alias,
    # and stand for the live collection only while it is the one adopted from them (aliases.sync_target).
    identity = qdrant.alias_index().identity(index.collection) or {}
    adopted = identity.get("adopted_from")
    accepted = [index.collection, *([adopted] if adopted else [])]
    listed = lake.row_counts(VECTOR_INDEX)  # shard -> rows, from the table's manifests

    shards: dict[str, dict] = {}
    with index.session() as session:
        live_counts = session.shard_counts()
        for shard in sorted(set(listed) | set(live_counts)):
            if shard in busy:
                shards[shard] = {"skipped": "run in progress"}
                continue
            # One shard's ids and hashes at a time, as frames: the whole table's never are. Rows name the
            # physical collection they were synced into (or the alias, before aliases): a shard whose rows
            # are of another collection (a migration switched the alias since) is left to its next sync.
            rows = pl.from_arrow(lake.read_partition(VECTOR_INDEX, shard, ("point_id", "chunk_hash", "collection")))
            if rows.height and not rows["collection"].is_in(accepted).any():
                shards[shard] = {"skipped": f"synced into {rows['collection'][0]!r}; its next sync moves it"}
                continue
            want = rows.filter(pl.col("collection").is_in(accepted)).drop("collection")
            live = session.shard_points(shard) if shard in live_counts else pl.DataFrame(schema=LIVE_POINTS)
            drift = mismatches(want, live)
            missing, stale, extra = drift["missing"], drift["wrong_hash"], drift["extra"]
            pending = 0  # listed in vector_index, but embeddings moved on since: the shard's next run syncs it
            if missing or stale:
                broken = want.filter(pl.col("point_id").is_in(missing + stale))
                repair = shard_point_keys(lake, shard).join(broken, on=["point_id", "chunk_hash"], how="semi")
                pending = len(missing) + len(stale) - repair.height
                try:
                    for points in point_batches(lake, shard, repair, sparse_of(identity)):  # rebuilt from the tables, a batch at a time
                        session.upsert(points)
                except ShardMismatch as exc:  # the chunks are not yet encoded for this collection: its next sync repairs it
                    shards[shard] = {"skipped": str(exc)}
                    continue
            session.delete(extra)
            if missing or stale or extra or pending:
                shards[shard] = {"missing": len(missing), "stale": len(stale), "extra": len(extra), "pending": pending}
                log.info(f"reconciled shard {shard!r}: {shards[shard]}")
        after = session.shard_counts()
    totals = {k: sum(row.get(k, 0) for row in shards.values()) for k in ("missing", "stale", "extra", "pending")}
    totals["skipped"] = sum(1 for row in shards.values() if "skipped" in row)
    totals["shards_checked"] = len(set(listed) | set(live_counts))
    totals["points"] = sum(after.values())
    return {"collection": index.collection, "shards": shards, "totals": totals}
