"""`rag-assets repair`: bring damaged tables back to a readable state, then re-sync what the damage cost.

Two kinds of damage are repaired (others are reported with the table and file they concern):
- a table whose current metadata.json cannot be read (truncated, emptied, deleted): the catalog entry is
  pointed back at the newest readable metadata.json in the table's metadata/ folder (pyiceberg's own
  `drop_table` without purge + `register_table`). Every shard whose latest write to that table (the
  snapshot id its materialization recorded) is not in the restored history lost that write;
- a data file the current snapshot references but storage no longer holds: the partition holding it
  (a shard; in the vector store, the file's vectors) is removed from the table.
Each shard that lost rows has its recorded sync state invalidated (a runless `vector_index`
materialization with a `repair:` fingerprint), and the sync that repair runs at the end rebuilds it from
the source, reusing every vector and chunk that survived.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import dagster as dg
from pyiceberg.table import Table

from rag_assets.shard_state import FINGERPRINT, VECTOR_INDEX_KEY, latest_materialization_records
from rag_assets.tables import MAINTAINED_TABLES, QUARANTINE, VECTOR_STORE, CorruptTable, Lakehouse, TableSpec, transaction


@dataclass
class RepairReport:
    restored: dict[str, dict] = field(default_factory=dict)  # table -> {"from": bad location, "to": good location}
    missing_files: dict[str, list[str]] = field(default_factory=dict)  # table -> data files storage lacks
    invalidated: set[str] = field(default_factory=set)  # shards whose sync state was reset
    sync: dict | None = None

    def as_json(self) -> dict:
        return {"restored": self.restored, "missing_files": self.missing_files, "resynced_shards": sorted(self.invalidated),
                "sync": self.sync}


def _sql_metadata_location(lake: Lakehouse, spec: TableSpec) -> str | None:
    """The metadata location the SQL catalog points at, read without parsing it (None: another catalog)."""
    from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    if not isinstance(lake.catalog, SqlCatalog):
        return None
    with Session(lake.catalog.engine) as session:
        row = session.execute(select(IcebergTables.metadata_location).where(
            IcebergTables.catalog_name == lake.catalog.name, IcebergTables.table_namespace == lake.namespace,
            IcebergTables.table_name == spec.name)).first()
    return row[0] if row else None


def _readable(io, location: str) -> bool:
    from pyiceberg.serializers import FromInputFile

    try:
        FromInputFile.table_metadata(io.new_input(location))
        return True
    except Exception:  # noqa: BLE001 - any failure to read or parse means "not this one"
        return False


def restore_metadata(lake: Lakehouse, spec: TableSpec) -> dict | None:
    """Point the table at its newest readable metadata.json when the current one is unreadable; None when
    the current one reads."""
    from pyarrow.fs import FileSelector, FileType
    from pyiceberg.io.pyarrow import PyArrowFileIO

    location = _sql_metadata_location(lake, spec)
    if location is None:
        return None
    io = PyArrowFileIO(lake.catalog.properties)
    if _readable(io, location):
        return None
    scheme, netloc, path = io.parse_location(location)
    fs = io.fs_by_scheme(scheme, netloc)
    folder = path.rsplit("/", 1)[0]
    prefix = location[: len(location) - len(path)]  # scheme://netloc part, as the catalog wrote it
    candidates = sorted((f.path for f in fs.get_file_info(FileSelector(folder, allow_not_found=True))
                         if f.type == FileType.File and f.path.endswith(".metadata.json") and f.path != path), reverse=True)
    good = next((prefix + c for c in candidates if _readable(io, prefix + c)), None)
    if good is None:
        raise CorruptTable(f"table {lake.identifier(spec)}: no readable metadata.json under {prefix}{folder}; "
                           "restore the folder from a backup, or drop the table and run `rag-assets sync` to rebuild it")
    ident = lake.identifier(spec)
    lake.catalog.drop_table(ident)  # the catalog entry only: no file is deleted
    lake.catalog.register_table(ident, good)
    return {"from": location, "to": good}


def missing_data_files(table: Table) -> list:
    """The current snapshot's data files that storage does not hold."""
    return [task.file for task in table.scan().plan_files() if not table.io.new_input(task.file.file_path).exists()]


def lost_writes(instance: dg.DagsterInstance, table: Table, asset_key: dg.AssetKey) -> set[str]:
    """Shards materialized (`asset_key`) after the restored metadata was written: their writes may be lost."""
    restored_at = table.metadata.last_updated_ms / 1000
    return {r.asset_materialization.partition for r in latest_materialization_records(instance, asset_key)
            if r.asset_materialization and r.asset_materialization.partition and r.timestamp >= restored_at}


def invalidate(instance: dg.DagsterInstance, shards: set[str], why: str) -> None:
    """Make the next sync see these shards as changed (their recorded fingerprint no longer matches)."""
    for shard in sorted(shards):
        instance.report_runless_asset_event(dg.AssetMaterialization(
            VECTOR_INDEX_KEY, partition=shard, metadata={FINGERPRINT: f"repair: {why}"},
            description=f"sync state reset by `rag-assets repair`: {why}"))


def repair(instance: dg.DagsterInstance, resources: dict) -> RepairReport:
    from rag_assets.sync import run_sync

    lake = resources["iceberg"].lakehouse()
    report = RepairReport()
    for spec in MAINTAINED_TABLES:
        restored = restore_metadata(lake, spec)
        table = lake.table(spec)
        if restored:
            report.restored[spec.name] = restored
            if spec is not VECTOR_STORE:  # (the store only caches vectors: a lost one is embedded again)
                writer = dg.AssetKey("raw_documents" if spec is QUARANTINE else spec.name)  # who writes the table
                report.invalidated |= lost_writes(instance, table, writer)
        missing = missing_data_files(table)
        if missing:
            report.missing_files[spec.name] = sorted(f.file_path for f in missing)
            with transaction(table) as tx:  # drop exactly those files from the table's current snapshot
                with tx.update_snapshot(snapshot_properties={"rag.repair": "missing files"}).overwrite() as rewrite:
                    for data_file in missing:
                        rewrite.delete_data_file(data_file)
            if spec is not VECTOR_STORE:
                report.invalidated |= {f.partition[0] for f in missing}
    if report.invalidated:
        invalidate(instance, report.invalidated, json.dumps(sorted(report.restored) + sorted(report.missing_files)))
    report.sync = run_sync(instance, resources).as_json()
    return report
