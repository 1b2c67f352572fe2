"""What every step shares: stamps kept for unchanged rows and the narrow columns kept while writing."""

import datetime as dt

import polars as pl
import pyarrow as pa

from rag_assets.steps.rows import KeptColumns, keep_stamps
from rag_assets.tables import CHUNKS

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
T1 = dt.datetime(2026, 2, 1, tzinfo=dt.timezone.utc)


def test_keep_stamps_keeps_the_old_stamp_only_where_the_match_column_is_unchanged():
    rows = pl.DataFrame({"id": ["same", "edited", "new"], "hash": ["1", "2x", "3"], "at": [T1, T1, T1]})
    previous = pl.DataFrame({"id": ["same", "edited", "gone"], "hash": ["1", "2", "4"], "at": [T0, T0, T0]})
    kept = keep_stamps(rows, previous, "id", "hash", "at")
    assert kept.columns == rows.columns
    assert kept.rows() == [("same", "1", T0), ("edited", "2x", T1), ("new", "3", T1)]


class Collected:
    def __init__(self):
        self.tables = []

    def add(self, rows):
        self.tables.append(rows)


def test_kept_columns_writes_every_row_and_keeps_only_the_named_columns():
    out = Collected()
    kept = KeptColumns(out, ("chunk_id", "token_count"), CHUNKS)
    assert kept.frame().schema == {"chunk_id": pl.String, "token_count": pl.Int32}  # typed even when nothing was written
    table = pa.table({"chunk_id": ["a", "b"], "token_count": pa.array([3, 4], pa.int32()), "text": ["x", "y"]})
    kept.add(table)
    kept.add(pl.from_arrow(table.slice(0, 1)))
    kept.add(table.slice(0, 0))  # empty batches are not written
    assert len(out.tables) == 2
    assert kept.frame().rows() == [("a", 3), ("b", 4), ("a", 3)]
