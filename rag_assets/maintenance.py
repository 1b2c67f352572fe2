"""Long life: keep every table's history, files and the Dagster run history bounded.

Iceberg tables only grow by themselves: every commit adds a snapshot (and pyiceberg's commit cost grows
with the snapshots its metadata holds), a metadata.json, a manifest list and manifests, and replaced data
files stay on storage for time travel. What bounds each:

- snapshots: `expire_snapshots` (pyiceberg's own) removes those older than the retention window, never the
  current one; the window is what time travel and rollback can reach;
- metadata.json versions: the table properties `write.metadata.delete-after-commit.enabled` and
  `write.metadata.previous-versions-max`, applied by pyiceberg at every commit (set in `tables.TABLE_PROPERTIES`);
- manifests: merged at commit time (`commit.manifest-merge.enabled`, the writer uses merge-append);
- files: pyiceberg 0.12 has no orphan-file removal, so `remove_orphan_files` lists the table's folder and
  deletes what no retained snapshot references (data files, manifests, manifest lists, old metadata), but
  only files older than the orphan age: a commit still in flight may be about to add a younger one. The
  references are read again just before deleting, so a commit that landed meanwhile keeps its files;
- the vector store's files: `maintain_vector_store` drops vectors no shard references any more and merges
  each model's size tiers (rag_assets/vector_store.py); the files it replaces go with expiry as above;
- runs: finished runs older than the run retention are deleted with their event and compute logs, except
  the runs whose materializations are a shard's latest (they hold the state the sensor compares against).

Shards with a run in flight are not harmed: a shard's partition is only replaced by its own run, so the
files that run reads are referenced by the current snapshot until the run itself replaces them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

import dagster as dg
import tenacity
from dagster._core.storage.dagster_run import FINISHED_STATUSES
from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from rag_assets.shard_state import latest_materialization_records
from rag_assets.tables import Lakehouse, TableSpec
from rag_assets.vector_store import VectorStore


@dataclass(frozen=True)
class RetentionPolicy:
    snapshot_retention: dt.timedelta
    orphan_age: dt.timedelta
    run_retention: dt.timedelta

    MIN_ORPHAN_AGE = dt.timedelta(hours=1)  # a commit in flight may still add a file younger than this

    def __post_init__(self) -> None:
        # Here, not only in config.py: the retention resource can also be set in a run's config.
        if self.orphan_age < self.MIN_ORPHAN_AGE:
            raise ValueError(f"orphan age {self.orphan_age} is below {self.MIN_ORPHAN_AGE}: files a running commit "
                             "is about to add could be deleted")
        if self.snapshot_retention < dt.timedelta(0) or self.run_retention < dt.timedelta(0):
            raise ValueError("retention windows cannot be negative")


def _millis(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def expire_snapshots(table: Table, older_than: dt.datetime, attempts: int = 25) -> int:
    """Expire the snapshots older than `older_than`, except the current one (and any branch or tag head) and
    the newest of them, which was current at `older_than` (what `rag-assets rollback` to that time restores).

    pyiceberg retries a conflicting commit only for transactions that write snapshots, so a commit by a
    shard run in between is met here: reload the table, choose again, try again."""
    retrying = tenacity.Retrying(retry=tenacity.retry_if_exception_type(CommitFailedException), reraise=True,
                                 stop=tenacity.stop_after_attempt(attempts), wait=tenacity.wait_random(0.05, 1.0))
    for attempt in retrying:
        with attempt:
            if attempt.retry_state.attempt_number > 1:
                table = table.refresh()
            current = table.current_snapshot()
            old = sorted((s for s in table.metadata.snapshots if s.timestamp_ms < _millis(older_than)), key=lambda s: s.timestamp_ms)
            # The newest of them was current at the window's edge: a rollback to a time inside the window needs it.
            ids = [s.snapshot_id for s in old[:-1] if current is None or s.snapshot_id != current.snapshot_id]
            if ids:
                table.maintenance.expire_snapshots().by_ids(ids).commit()
    return len(ids)


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata refers to: metadata.json files (current and logged), and for each
    retained snapshot its manifest list, its manifests and their live data and delete files."""
    io = table.io
    refs = {table.metadata_location, *(log.metadata_file for log in table.metadata.metadata_log)}
    refs |= {s.statistics_path for s in table.metadata.statistics}
    refs |= {s.statistics_path for s in table.metadata.partition_statistics}
    seen_manifests: set[str] = set()
    for snapshot in table.metadata.snapshots:
        refs.add(snapshot.manifest_list)
        for manifest in snapshot.manifests(io):
            if manifest.manifest_path in seen_manifests:  # manifests are shared by consecutive snapshots
                continue
            seen_manifests.add(manifest.manifest_path)
            refs.add(manifest.manifest_path)
            refs |= {entry.data_file.file_path for entry in manifest.fetch_manifest_entry(io, discard_deleted=True)}
    return refs


def remove_orphan_files(table: Table, older_than: dt.datetime, reload) -> dict[str, int]:
    """Delete files under the table's location that no retained snapshot references and that were last
    modified before `older_than`. `reload()` returns the table as it is now (checked again before deleting)."""
    from pyarrow.fs import FileSelector, FileType

    io = table.io
    if not hasattr(io, "fs_by_scheme"):  # another FileIO (fsspec): no listing here
        return {"orphans_found": 0, "deleted": 0, "kept_young": 0, "unsupported_file_io": 1}
    scheme, netloc, root = io.parse_location(table.location())
    fs = io.fs_by_scheme(scheme, netloc)

    def key(location: str) -> str:
        return io.parse_location(location)[2]

    refs = {key(f) for f in referenced_files(table)}
    # Only Iceberg's own folders of the table: anything else a person put under its location is not ours.
    own = tuple(f"{root.rstrip('/')}/{folder}/" for folder in ("data", "metadata"))
    listed = [f for f in fs.get_file_info(FileSelector(root, recursive=True, allow_not_found=True))
              if f.type == FileType.File and f.path.startswith(own)]
    orphans = [f for f in listed if f.path not in refs]
    old = [f for f in orphans if f.mtime is not None and f.mtime < older_than]
    young = len(orphans) - len(old)
    if old:
        now = reload()
        if now.metadata_location != table.metadata_location:  # a commit landed meanwhile: its files stay
            refs |= {key(f) for f in referenced_files(now)}
            old = [f for f in old if f.path not in refs]
    counts = {"data": 0, "manifests": 0, "manifest_lists": 0, "metadata": 0, "other": 0}  # "other": e.g. statistics
    for f in old:
        try:
            fs.delete_file(f.path)
        except FileNotFoundError:  # another maintenance run got there first
            continue
        counts[_kind(f.path)] += 1
    return {"orphans_found": len(orphans), "deleted": sum(counts.values()), "kept_young": young,
            **{f"deleted_{k}": v for k, v in counts.items()}}


def _kind(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    if "/data/" in path or name.endswith(".parquet"):
        return "data"
    if name.startswith("snap-") and name.endswith(".avro"):
        return "manifest_lists"
    if name.endswith(".avro"):
        return "manifests"
    if name.endswith(".metadata.json"):
        return "metadata"
    return "other"


def maintain_table(lake: Lakehouse, spec: TableSpec, policy: RetentionPolicy, now: dt.datetime) -> dict:
    """Expire old snapshots, then delete old unreferenced files; returns what was found and done."""
    table = lake.table(spec)
    snapshots_before = len(table.metadata.snapshots)
    expired = expire_snapshots(table, now - policy.snapshot_retention)
    table = table.refresh()
    files = remove_orphan_files(table, now - policy.orphan_age, table.refresh)
    table = table.refresh()
    current = table.current_snapshot()
    return {
        "table": lake.identifier(spec),
        "snapshots_before": snapshots_before,
        "expired_snapshots": expired,
        "snapshots": len(table.metadata.snapshots),
        "manifests": len(current.manifests(table.io)) if current else 0,
        "metadata_versions": len(table.metadata.metadata_log) + 1,
        **files,
    }


def latest_state_runs(instance: dg.DagsterInstance, asset_keys) -> set[str]:
    """Run ids holding the newest materialization of some partition of one of `asset_keys`."""
    return {r.run_id for key in asset_keys for r in latest_materialization_records(instance, key) if r.run_id}


def delete_old_runs(instance: dg.DagsterInstance, older_than: dt.datetime, keep: set[str], limit: int = 10_000) -> dict:
    """Delete finished runs last updated before `older_than` (their events and compute logs with them),
    except those in `keep`; at most `limit` per call, oldest first, so one call stays bounded."""
    records = instance.get_run_records(
        dg.RunsFilter(statuses=list(FINISHED_STATUSES), updated_before=older_than), limit=limit, order_by="update_timestamp", ascending=True,
    )
    deleted = kept = 0
    for record in records:
        run_id = record.dagster_run.run_id
        if run_id in keep:
            kept += 1
            continue
        try:
            instance.compute_log_manager.delete_logs(prefix=[run_id])  # a run's captured logs live under its id
        except NotImplementedError:  # a compute log manager that cannot delete: its own retention applies
            pass
        instance.delete_run(run_id)
        deleted += 1
    return {"deleted_runs": deleted, "kept_runs_with_latest_state": kept}


def maintain_vector_store(lake: Lakehouse, protected: Iterable[str] = ()) -> dict[str, int]:
    """Drop store vectors no shard references any more (but none of the `protected` models'), then merge
    what each model's tiers hold in excess."""
    store = VectorStore(lake)
    report = store.collect_garbage(protected)
    report["merged_files"] = sum(store.compact(model) for model in store.models())
    return report

