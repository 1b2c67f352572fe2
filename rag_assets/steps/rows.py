"""What every shard step shares: timestamps kept for unchanged rows, data versions, the writer helper
that keeps the narrow columns a step reports, and the metadata every materialization shows."""

from __future__ import annotations

import datetime as dt
import hashlib
import time

import dagster as dg
import polars as pl
import pyarrow as pa

from rag_assets.tables import COLUMN_DOCS, PartitionWriter, TableSpec, WriteResult


def now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def keep_stamps(rows: pl.DataFrame, previous: pl.DataFrame, key: str, match: str, stamp: str) -> pl.DataFrame:
    """`rows` with the previous row's `stamp` wherever the row with the same `key` had the same `match`
    value: unchanged rows keep their timestamps, so a re-run writes the same rows (and commits nothing)."""
    joined = rows.join(previous.select(key, match, stamp), on=key, how="left", suffix="_old", maintain_order="left")
    unchanged = pl.col(f"{match}_old") == pl.col(match)
    return joined.with_columns(pl.when(unchanged).then(pl.col(f"{stamp}_old")).otherwise(pl.col(stamp)).alias(stamp)).select(rows.columns)


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


def stacked(frames: list[pl.DataFrame], schema: dict) -> pl.DataFrame:
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)


class KeptColumns:
    """Streams rows into a partition writer and keeps a few narrow columns of every row written (ids,
    hashes, counts): what the step reports and digests afterwards, without holding the rows."""

    def __init__(self, out: PartitionWriter, columns: tuple[str, ...], spec: TableSpec):
        self.out, self.columns = out, columns
        self._kept = [pl.from_arrow(spec.arrow_schema.empty_table().select(list(columns)))]

    def add(self, rows: pa.Table | pl.DataFrame) -> None:
        rows = rows.to_arrow() if isinstance(rows, pl.DataFrame) else rows
        if rows.num_rows:
            self.out.add(rows)
            self._kept.append(pl.from_arrow(rows.select(list(self.columns))))

    def frame(self) -> pl.DataFrame:
        return pl.concat(self._kept)


def table_metadata(spec: TableSpec, result: WriteResult, started: float, **counts) -> dict:
    """The metadata every shard materialization shows: row count, table, schema, snapshot, seconds."""
    return {
        "dagster/row_count": result.rows,
        "dagster/table_name": result.table,
        "dagster/column_schema": dg.TableSchema(
            columns=[dg.TableColumn(f.name, str(f.field_type), description=COLUMN_DOCS.get(f.name)) for f in spec.schema.fields]
        ),
        "iceberg/snapshot_id": dg.MetadataValue.text(str(result.snapshot_id)),
        "iceberg/committed": result.committed,
        "seconds": round(time.perf_counter() - started, 3),
        **counts,
    }
