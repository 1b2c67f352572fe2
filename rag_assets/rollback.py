"""`rag-assets rollback --to ISO_TIME`: the tables, the live collection and the sync state back to a moment.

1. Each shard table's current snapshot becomes the one that was current at that time (Iceberg's own
   snapshot log; a table made later, or empty then, is emptied). The time must lie within the snapshot
   retention window (`RAG_SNAPSHOT_RETENTION_HOURS`) and every table must still hold its history back
   to it; otherwise nothing changes and the error says how far back it can go.
2. The live collection is reconciled to the restored `vector_index` (points rebuilt from the restored
   tables: no model call).
3. The sync state is made to agree, so that the next sync neither undoes the rollback nor re-embeds
   anything: each shard's synced record becomes the source's *current* listing fingerprint with the index
   settings it had then, so a shard syncs again only when its source changes after the rollback. A shard
   that had rows then but is gone from the source now comes back (partition, rows, points) and is held
   by the deletion guard until `rag-assets sync --allow-deletes` removes it; a shard with neither rows
   then nor a source now loses its partition.

The vector store (the (model, chunk_hash) cache) is not rolled back: it only ever adds vectors, and the
restored `embeddings` rows carry their own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import dagster as dg
from dagster._core.storage.dagster_run import NOT_FINISHED_STATUSES
from pyiceberg.expressions import AlwaysTrue

from rag_assets.defs.partitions import add_shards, shards
from rag_assets.shard_state import (
    ABSENT_FINGERPRINT, FINGERPRINT, RAW_DOCUMENTS_KEY, ROLLED_BACK, SETTINGS, VECTOR_INDEX_KEY,
)
from rag_assets.tables import ALL_TABLES, QUARANTINE, VECTOR_INDEX, Lakehouse, transaction


class OutsideWindow(ValueError):
    """The time is in the future, older than the retention window, or older than a table's history."""


@dataclass(frozen=True)
class Target:
    snapshot_id: int | None  # None: the table was empty (or did not exist) then
    snapshot_at: dt.datetime | None


def _utc(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)


def targets(lake: Lakehouse, to: dt.datetime, retention: dt.timedelta, now: dt.datetime, synced_before: bool) -> dict[str, Target]:
    """The snapshot each shard table goes back to; OutsideWindow before anything is changed. `synced_before`:
    the Dagster instance records a sync before `to` (so the tables held rows then)."""
    if to > now:
        raise OutsideWindow(f"rollback to {to.isoformat()}: that is in the future (now {now.isoformat()})")
    if to < now - retention:
        raise OutsideWindow(
            f"rollback to {to.isoformat()}: outside the snapshot retention window (RAG_SNAPSHOT_RETENTION_HOURS="
            f"{retention.total_seconds() / 3600:g}: back to {(now - retention).isoformat()} at most)")
    ms = int(to.timestamp() * 1000)
    out = {}
    for spec in ALL_TABLES:
        table = lake.table(spec)
        snapshot = table.snapshot_as_of_timestamp(ms)
        if snapshot is not None:
            out[spec.name] = Target(snapshot.snapshot_id, _utc(snapshot.timestamp_ms))
            continue
        # No snapshot then: the table was empty, or its history was expired (an expiry leaves no trace in the
        # table itself). After a sync recorded before `to`, every table but the quarantine held rows then, so
        # the history is gone: refuse rather than empty it. (A quarantine with no snapshot then is taken as
        # empty: its rows are rebuilt by the next read of the shard.)
        if spec is not QUARANTINE and synced_before:
            oldest = min((e.timestamp_ms for e in table.history()), default=None)
            raise OutsideWindow(f"rollback to {to.isoformat()}: table {lake.identifier(spec)} keeps history back to "
                                f"{_utc(oldest).isoformat() if oldest else 'nothing'} only (older snapshots were expired)")
        out[spec.name] = Target(None, None)
    return out


def restore_tables(lake: Lakehouse, chosen: dict[str, Target]) -> dict[str, dict]:
    """Make each table's current snapshot the chosen one; returns rows before and after per table."""
    report = {}
    for spec in ALL_TABLES:
        target, table = chosen[spec.name], lake.table(spec)
        before = sum(lake.row_counts(spec).values())
        current = table.current_snapshot()
        if target.snapshot_id is None:
            if current is not None and before:
                with transaction(table) as tx:
                    tx.delete(AlwaysTrue())
        elif current is None or current.snapshot_id != target.snapshot_id:
            table.manage_snapshots().set_current_snapshot(snapshot_id=target.snapshot_id).commit()
        report[spec.name] = {"snapshot_id": target.snapshot_id,
                             "snapshot_at": target.snapshot_at.isoformat() if target.snapshot_at else None,
                             "rows_before": before, "rows_after": sum(lake.row_counts(spec).values())}
    return report


def settings_as_of(instance: dg.DagsterInstance, shard: str, to: dt.datetime) -> dict[str, str] | None:
    """The index settings `shard` was synced with at `to` (its newest vector_index record then), or None."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=VECTOR_INDEX_KEY, asset_partitions=[shard], before_timestamp=to.timestamp()), limit=1,
    ).records
    if not records:
        return None
    meta = records[0].asset_materialization.metadata
    return {k: str(meta[k].value) for k in SETTINGS if k in meta}


def sync_records(instance: dg.DagsterInstance, lake: Lakehouse, listing: dict[str, str], current: dict[str, str],
                 to: dt.datetime) -> tuple[list[dg.AssetMaterialization], list[str], list[str]]:
    """(vector_index records to log, partitions to add, partitions to delete) after the tables went back to `to`.
    `listing`: shard -> the source's fingerprint now; `current`: the configured index settings."""
    rows_then = set(lake.row_counts(VECTOR_INDEX))
    known = set(instance.get_dynamic_partitions(shards.name))
    records = []
    for shard in sorted(rows_then | (known & set(listing))):
        settings = settings_as_of(instance, shard, to) or current
        fingerprint = listing.get(shard, ABSENT_FINGERPRINT)
        records.append(dg.AssetMaterialization(
            asset_key=VECTOR_INDEX_KEY, partition=shard,
            metadata={FINGERPRINT: fingerprint, **settings, ROLLED_BACK: to.isoformat()},
            description=f"rolled back to {to.isoformat()}",
        ))
    return records, sorted(rows_then - known), sorted(known - rows_then - set(listing))


def apply_partitions(instance: dg.DagsterInstance, add: list[str], delete: list[str]) -> None:
    add_shards(instance, add)
    for shard in delete:
        instance.delete_dynamic_partition(shards.name, shard)


def parse_time(value: str) -> dt.datetime:
    """An ISO 8601 time; one without a zone is UTC."""
    try:
        parsed = dt.datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise OutsideWindow(f"--to {value!r} is not an ISO 8601 time (e.g. 2026-12-01T09:30:00Z)") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def roll_back(context, to: dt.datetime, iceberg, qdrant, source, model, retention) -> dict:
    """Steps 1-3 of the module's docstring, for the rollback job's op; returns what was done."""
    from rag_assets.reconcile import reconcile_index
    from rag_assets.runs import busy_shards
    from rag_assets.shard_state import index_settings

    busy = busy_shards(context.instance, except_run=context.run_id)  # from here on, this run keeps every shard busy
    if busy:
        raise RuntimeError(f"shards {sorted(busy)} have runs queued or in flight; roll back once they are done")
    migrating = context.instance.get_runs(dg.RunsFilter(job_name="migration_job", statuses=list(NOT_FINISHED_STATUSES)))
    if migrating:
        raise RuntimeError(f"a migration (run {migrating[0].run_id}) is in flight; roll back once it is done")
    lake = iceberg.lakehouse()
    synced_before = bool(context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=RAW_DOCUMENTS_KEY, before_timestamp=to.timestamp()), limit=1).records)
    chosen = targets(lake, to, retention.policy().snapshot_retention, dt.datetime.now(dt.timezone.utc), synced_before)
    listing = {shard: found.fingerprint for shard, found in source.open().list_shards().items()}  # before any change
    tables = restore_tables(lake, chosen)
    records, added, deleted = sync_records(context.instance, lake, listing, index_settings(model, qdrant), to)
    apply_partitions(context.instance, added, deleted)
    for record in records:
        context.log_event(record)
    index = reconcile_index(iceberg, qdrant, set(), context.log)  # no model call: points come from the tables
    return {"to": to.isoformat(), "tables": tables, "index": index["totals"], "collection": index["collection"],
            "shards": {r.partition: {"source": "absent" if r.metadata[FINGERPRINT].value == ABSENT_FINGERPRINT else "listed"}
                       for r in records},
            "partitions_added": added, "partitions_deleted": deleted}
