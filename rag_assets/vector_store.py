"""The (model, chunk_hash) -> vector store: where the `embeddings` step finds a vector embedded before.

An Iceberg table (`tables.VECTOR_STORE`) that any engine can read, partitioned by model. Each data file
holds unique hashes sorted by chunk_hash, in row groups of 4,096 rows. A lookup of a new shard's k hashes
reads the model's manifests, opens only the files whose chunk_hash bounds (Iceberg column metrics) can
hold one of them, and in those reads only the hash column of the row groups whose min/max can hold one;
vectors are read only for the row groups that matched. pyiceberg's own scan cannot do this for a new
shard (an `In` of more than 200 values prunes nothing in 0.12), hence `lookup`.

Files stay few by size-tiered merging, as in an LSM tree: each `embeddings` run appends its new vectors
as sorted files, and when `FANOUT` files of one size tier exist they are merged into one (one Iceberg
overwrite that deletes exactly those files; a concurrent merge of the same files fails validation and is
dropped, appends never conflict). A model's store holds O(FANOUT x log(vectors)) files, each vector is
rewritten O(log) times, and a lookup costs about the same with 10 or 2,000 shards in the table
(benchmarks/reuse_lookup.py). Files stop growing at `MAX_MERGE_ROWS` rows (a merge holds its inputs in
memory), past which the file count grows by one per that many vectors.

Vectors whose hash no shard's `embeddings` row holds any more (a removed document or shard) are dropped
by `collect_garbage`, which the maintenance job runs: the store never serves what the tables no longer
reference for longer than one maintenance period (plus the snapshot retention window, like every table).
The models of collections that a migration built, or kept for a switch back, are kept until the
collection is dropped (`rag-assets migrate --drop-old`).
Duplicates (two shards embedding one new text at once) are harmless: a lookup takes the first found,
and merges keep one row per hash.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.exceptions import CommitFailedException, ValidationException
from pyiceberg.expressions import AlwaysTrue, EqualTo
from pyiceberg.io.pyarrow import _dataframe_to_data_files
from pyiceberg.manifest import DataFile
from pyiceberg.table import Table

from rag_assets.tables import EMBEDDINGS, VECTOR_STORE, Lakehouse, transaction

log = logging.getLogger(__name__)

FANOUT = 8  # files of one size tier merged at once
MAX_MERGE_ROWS = 262_144  # ~400 MB of 384-d vectors held by the largest merge
STORE_COLUMNS = ("chunk_hash", "dim", "vector", "embedded_at")  # what a found vector carries
HASH_FIELD_ID = VECTOR_STORE.schema.find_field("chunk_hash").field_id


ROW_GROUP_ROWS = int(dict(VECTOR_STORE.properties)["write.parquet.row-group-limit"])


def tier(rows: int) -> int:
    """Size tier of a file, counted in row groups: files of up to FANOUT - 1 row groups are tier 0, and
    FANOUT files of tier t merge into about one of tier t+1. (Counting rows instead would leave a tier
    per power of FANOUT below one row group: many tiny files, each opened by every lookup.)"""
    groups, level = -(-max(rows, 1) // ROW_GROUP_ROWS), 0
    while groups >= FANOUT:
        groups //= FANOUT
        level += 1
    return level


@dataclass
class Hits:
    """Where a lookup found vectors: the hashes, and the (file, row group)s that hold them."""

    hashes: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"chunk_hash": pl.String}))
    places: list[tuple[str, int]] = field(default_factory=list)
    files_read: int = 0  # data files opened (the cost that must not grow with the table)


def _bounds(data_file: DataFile) -> tuple[str, str] | None:
    lower, upper = data_file.lower_bounds or {}, data_file.upper_bounds or {}
    if HASH_FIELD_ID not in lower or HASH_FIELD_ID not in upper:
        return None  # no metrics: the file can hold anything
    # Truncated string bounds (metrics mode truncate(16)) are still bounds: lower <= every value <= upper.
    return lower[HASH_FIELD_ID].decode(), upper[HASH_FIELD_ID].decode()


def _any_between(wanted: np.ndarray, low: str | None, high: str | None) -> bool:
    """Whether sorted `wanted` holds a value in [low, high] (None: unbounded)."""
    start = 0 if low is None else int(np.searchsorted(wanted, low, side="left"))
    if start >= len(wanted):
        return False
    return high is None or wanted[start] <= high


SEEDED = "rag.seeded"  # table property: the store holds every vector `embeddings` held when it was made


class VectorStore:
    def __init__(self, lake: Lakehouse):
        self.lake = lake
        self._seeded = False

    def table(self) -> Table:
        """The store table; made on first use and then filled from `embeddings` (a deployment from
        before the store reuses every vector it has; two processes doing it at once only duplicate rows)."""
        table = self.lake.table(VECTOR_STORE)
        if not self._seeded and table.properties.get(SEEDED) != "true":
            self._seeded = True  # (seeding writes through `table()` too)
            written = self.seed_from_embeddings()
            for _ in range(10):  # a property update is not retried by pyiceberg; other writers may commit
                try:
                    with transaction(table.refresh()) as tx:
                        tx.set_properties({SEEDED: "true"})
                    break
                except CommitFailedException:
                    continue
            log.info("vector store seeded with %d vectors from embeddings", written)
            table = self.lake.table(VECTOR_STORE)
        self._seeded = True
        return table

    def models(self) -> list[str]:
        return sorted({task.file.partition[0] for task in self.table().scan().plan_files()})

    def files(self, model: str, table: Table | None = None) -> list[DataFile]:
        table = table or self.table()
        return [task.file for task in table.scan(row_filter=EqualTo("model", model)).plan_files()]

    # --- reading -------------------------------------------------------------------------------------

    def lookup(self, model: str, hashes: Iterable[str]) -> Hits:
        """Which of `hashes` the store holds for `model`, and where."""
        wanted = np.unique(np.asarray(list(hashes), dtype=object).astype(str))
        hits = Hits()
        if not len(wanted):
            return hits
        table = self.table()
        wanted_frame = pl.DataFrame({"chunk_hash": wanted})
        found = []
        for data_file in self.files(model, table):
            bounds = _bounds(data_file)
            if bounds is not None and not _any_between(wanted, *bounds):
                continue
            hits.files_read += 1
            with table.io.new_input(data_file.file_path).open() as stream:
                parquet = pq.ParquetFile(stream)
                column = parquet.schema_arrow.get_field_index("chunk_hash")
                for group in range(parquet.num_row_groups):
                    stats = parquet.metadata.row_group(group).column(column).statistics
                    if stats is not None and stats.has_min_max and not _any_between(wanted, stats.min, stats.max):
                        continue
                    in_group = pl.from_arrow(parquet.read_row_group(group, columns=["chunk_hash"])).join(wanted_frame, on="chunk_hash", how="semi")
                    if in_group.height:
                        found.append(in_group)
                        hits.places.append((data_file.file_path, group))
        if found:
            hits.hashes = pl.concat(found).unique("chunk_hash")
        return hits

    def vectors(self, hits: Hits) -> Iterator[pa.Table]:
        """(chunk_hash, dim, vector, embedded_at) of the hits, a row group at a time."""
        if not hits.places:
            return
        io = self.table().io
        wanted = pa.array(hits.hashes["chunk_hash"].to_list(), pa.string())
        schema = pa.schema([VECTOR_STORE.arrow_schema.field(c) for c in STORE_COLUMNS])
        for path, group in hits.places:
            with io.new_input(path).open() as stream:
                rows = pq.ParquetFile(stream).read_row_group(group, columns=list(STORE_COLUMNS))
            rows = rows.filter(pa.compute.is_in(rows["chunk_hash"], value_set=wanted))
            if rows.num_rows:
                yield rows.cast(schema)

    # --- writing -------------------------------------------------------------------------------------

    def _data_files(self, table: Table, model: str, rows: pa.Table) -> list[DataFile]:
        """Sorted, unique-by-hash data files of `rows` (STORE_COLUMNS) for `model`, not yet committed."""
        rows = pl.from_arrow(rows.select(list(STORE_COLUMNS))).unique("chunk_hash", keep="first").sort("chunk_hash").to_arrow()
        rows = rows.append_column("model", pa.array([model] * rows.num_rows, pa.string()))
        rows = rows.select(VECTOR_STORE.arrow_schema.names).cast(VECTOR_STORE.arrow_schema)
        return list(_dataframe_to_data_files(table_metadata=table.metadata, df=rows, io=table.io, write_uuid=uuid.uuid4()))

    def appender(self, model: str) -> StoreAppend:
        return StoreAppend(self, model)

    def add(self, model: str, windows: Iterable[pa.Table]) -> int:
        """Append vectors (STORE_COLUMNS tables) in one commit, then merge; returns the rows written."""
        with self.appender(model) as append:
            for window in windows:
                append.add(window)
            append.commit()
            return append.rows

    def seed_from_embeddings(self) -> int:
        """Fill the store from the `embeddings` table (a deployment made before the store existed): every
        model's vectors, a sorted file per batch, one commit per model, then merged. Returns the rows written."""
        appends: dict[str, StoreAppend] = {}
        try:
            for batch in self.lake.batches(EMBEDDINGS, AlwaysTrue(), ("model",) + STORE_COLUMNS):
                for (model,), rows in pl.from_arrow(batch).partition_by("model", as_dict=True).items():
                    appends.setdefault(model, self.appender(model)).add(rows.drop("model").to_arrow())
            for append in appends.values():
                append.commit()
        finally:
            for append in appends.values():
                append.__exit__(None, None, None)  # deletes what was not committed
        return sum(append.rows for append in appends.values())

    def compact(self, model: str) -> int:
        """Merge every size tier holding FANOUT or more files (smallest tier first, so a merge's output can
        complete the next tier). Returns the files merged; a merge lost to another process is skipped."""
        merged = 0
        for _ in range(64):  # each pass merges one tier; a tier count this high is never reached
            table = self.table()
            tiers: dict[int, list[DataFile]] = {}
            for data_file in self.files(model, table):
                if data_file.record_count < MAX_MERGE_ROWS:
                    tiers.setdefault(tier(data_file.record_count), []).append(data_file)
            full = sorted(t for t, files in tiers.items() if len(files) >= FANOUT)
            if not full:
                return merged
            inputs = sorted(tiers[full[0]], key=lambda f: f.record_count)
            while sum(f.record_count for f in inputs) > MAX_MERGE_ROWS and len(inputs) > 2:
                inputs.pop()
            if not self._rewrite(table, model, inputs, keep=None):
                return merged
            merged += len(inputs)
        return merged

    def _read_files(self, table: Table, files: list[DataFile]) -> pa.Table:
        parts = []
        for data_file in files:
            with table.io.new_input(data_file.file_path).open() as stream:
                parts.append(pq.read_table(stream, columns=list(STORE_COLUMNS)))
        schema = pa.schema([VECTOR_STORE.arrow_schema.field(c) for c in STORE_COLUMNS])
        return pa.concat_tables([p.cast(schema) for p in parts])

    def _rewrite(self, table: Table, model: str, inputs: list[DataFile], keep: pl.DataFrame | None) -> bool:
        """Replace `inputs` by sorted files of their rows (only hashes in `keep`, when given), in one
        overwrite that deletes exactly those files. False when another process changed them first."""
        rows = self._read_files(table, inputs)
        if keep is not None:
            rows = pl.from_arrow(rows).join(keep, on="chunk_hash", how="semi").to_arrow()
        outputs = self._data_files(table, model, rows) if rows.num_rows else []
        try:
            with transaction(table) as tx:
                with tx.update_snapshot(snapshot_properties={"rag.model": model}).overwrite() as rewrite:
                    for data_file in inputs:
                        rewrite.delete_data_file(data_file)
                    for data_file in outputs:
                        rewrite.append_data_file(data_file)
        except (CommitFailedException, ValidationException) as exc:
            log.info("vector store merge of %d files skipped (another process changed them): %s", len(inputs), exc)
            for data_file in outputs:
                table.io.delete(data_file.file_path)
            return False
        return True

    def collect_garbage(self, protected: Iterable[str] = ()) -> dict[str, int]:
        """Drop the vectors whose (model, chunk_hash) no `embeddings` row holds: each file holding any is
        rewritten without them. Models in `protected` are kept whole: those of collections a migration built
        or kept for a switch back, which `embeddings` does not reference (rag_assets/migration.py).
        Returns rows dropped and files rewritten."""
        referenced = pl.concat(
            [pl.from_arrow(b) for b in self.lake.batches(EMBEDDINGS, AlwaysTrue(), ("model", "chunk_hash"))]
            or [pl.DataFrame(schema={"model": pl.String, "chunk_hash": pl.String})]
        ).unique()
        table = self.table()
        dropped = rewritten = 0
        for model in sorted(set(self.models()) - set(protected)):
            keep = referenced.filter(pl.col("model") == model).select("chunk_hash")
            for data_file in self.files(model, table):
                with table.io.new_input(data_file.file_path).open() as stream:
                    hashes = pl.from_arrow(pq.read_table(stream, columns=["chunk_hash"]))
                garbage = hashes.join(keep, on="chunk_hash", how="anti").height
                if garbage and self._rewrite(table, model, [data_file], keep):
                    dropped, rewritten = dropped + garbage, rewritten + 1
                    table = table.refresh()
        return {"dropped_vectors": dropped, "rewritten_files": rewritten}



class StoreAppend:
    """New vectors written to the store as they come (a sorted file per batch), committed at once by
    `commit()`, which then merges tiers; left uncommitted (an error), its files are deleted."""

    def __init__(self, store: VectorStore, model: str):
        self.store, self.model = store, model
        self.table = store.table()
        self.files: list[DataFile] = []
        self.rows = 0

    def add(self, vectors: pa.Table) -> None:
        if vectors.num_rows:
            self.files += self.store._data_files(self.table, self.model, vectors)
            self.rows += vectors.num_rows

    def commit(self) -> None:
        if not self.files:
            return
        with transaction(self.table) as tx:
            with tx.update_snapshot(snapshot_properties={"rag.model": self.model}).merge_append() as append:
                for data_file in self.files:
                    append.append_data_file(data_file)
        self.files = []
        try:
            self.store.compact(self.model)
        except Exception:  # merging is upkeep: the vectors are committed; the next append or maintenance merges
            log.warning("vector store merge failed; left to the next append or maintenance", exc_info=True)

    def __enter__(self) -> StoreAppend:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for data_file in self.files:  # not committed
            try:
                self.table.io.delete(data_file.file_path)
            except OSError:
                log.warning("could not remove uncommitted vector store file %s", data_file.file_path)
        self.files = []
