"""The Iceberg tables: their schemas and the one way each shard's partition is read and replaced.

Every table has a `shard` column with an identity partition on it. A materialization of shard S
replaces exactly partition S in a single catalog commit (delete + append in one transaction);
pyiceberg retries that commit itself when another shard committed first. A write whose rows equal
what the partition already holds commits nothing, so re-running a partition is a no-op.
"""

from __future__ import annotations

import functools
import threading
from datetime import datetime
from collections import Counter, OrderedDict
import logging
import uuid
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import (
    CommitFailedException,
    NamespaceAlreadyExistsError,
    NoSuchTableError,
    TableAlreadyExistsError,
    ValidationException,
)
from pyiceberg.exceptions import ValidationError as IcebergValidationError
from pyiceberg.expressions import AlwaysTrue, And, BooleanExpression, EqualTo, In
from pyiceberg.expressions.visitors import bind, extract_field_ids
from pyiceberg.io.fileformat import FileFormatFactory
from pyiceberg.io.pyarrow import expression_to_pyarrow, schema_to_pyarrow
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.partitioning import PartitionField, PartitionFieldValue, PartitionKey, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import StagedTable, Table, Transaction
from pyiceberg.table.metadata import TableMetadata
from pyiceberg.table.locations import load_location_provider
from pyiceberg.table.sorting import SortField, SortOrder
from pyiceberg.transforms import IdentityTransform
from pyiceberg.types import (
    FloatType,
    IntegerType,
    ListType,
    LongType,
    NestedField,
    StringType,
    TimestamptzType,
)

log = logging.getLogger(__name__)


def _fields(*specs: tuple[str, object, bool]) -> Schema:
    return Schema(*(NestedField(i, name, typ, required=req) for i, (name, typ, req) in enumerate(specs, start=1)))


@dataclass(frozen=True)
class TableSpec:
    name: str
    schema: Schema
    key: tuple[str, ...]  # unique within a partition; the sort order of written rows
    partition_by: str = "shard"  # the identity-partitioned column
    properties: tuple[tuple[str, str], ...] = ()  # table properties beyond TABLE_PROPERTIES

    @property
    def table_properties(self) -> dict[str, str]:
        return {**TABLE_PROPERTIES, **dict(self.properties)}

    @property
    def partition_spec(self) -> PartitionSpec:
        field = self.schema.find_field(self.partition_by)
        return PartitionSpec(PartitionField(source_id=field.field_id, field_id=1000, transform=IdentityTransform(), name=self.partition_by))

    @property
    def sort_order(self) -> SortOrder:
        return SortOrder(*(SortField(source_id=self.schema.find_field(k).field_id, transform=IdentityTransform()) for k in self.key))

    @functools.cached_property
    def arrow_schema(self) -> pa.Schema:
        # Without field ids: a table's ids are its own (pyiceberg numbers a new table's nested fields afresh,
        # and evolution numbers added columns after the old ones), so rows match a table's columns by name.
        return schema_to_pyarrow(self.schema, include_field_ids=False)


S, I, L, T = StringType(), IntegerType(), LongType(), TimestamptzType()

RAW_DOCUMENTS = TableSpec(
    "raw_documents",
    _fields(
        ("shard", S, True), ("doc_id", S, True), ("title", S, False), ("text", S, True), ("metadata", S, False),
        ("content_hash", S, True), ("source_uri", S, True), ("source_size", L, False),
        ("source_version", S, False), ("ingested_at", T, True),
    ),
    ("doc_id",),
)
CHUNKS = TableSpec(
    "chunks",
    _fields(
        ("shard", S, True), ("doc_id", S, True), ("chunk_id", S, True), ("chunk_index", I, True), ("text", S, True),
        ("token_count", I, True), ("char_start", I, True), ("char_end", I, True), ("chunk_hash", S, True),
        ("metadata", S, False),
        # content_hash of the document the chunk came from: an unchanged document keeps its chunks
        # without being split again. Optional so that tables made before it gain it by evolution.
        ("doc_hash", S, False),
        # The chunk's BM25 term weights (rag_assets/sparse.py) and the encoder that made them; null with
        # RAG_SPARSE=none. Optional, like doc_hash, so that older tables gain them by evolution.
        ("sparse_encoder", S, False),
        ("sparse_indices", ListType(101, LongType(), element_required=True), False),
        ("sparse_values", ListType(102, FloatType(), element_required=True), False),
    ),
    ("doc_id", "chunk_index"),
)
EMBEDDINGS = TableSpec(
    "embeddings",
    Schema(
        NestedField(1, "shard", S, required=True),
        NestedField(2, "chunk_id", S, required=True),
        NestedField(3, "chunk_hash", S, required=True),
        NestedField(4, "model", S, required=True),
        NestedField(5, "dim", I, required=True),
        NestedField(6, "vector", ListType(8, FloatType(), element_required=True), required=True),
        NestedField(7, "embedded_at", T, required=True),
    ),
    ("chunk_id",),
)
VECTOR_INDEX = TableSpec(
    "vector_index",
    _fields(
        ("shard", S, True), ("chunk_id", S, True), ("point_id", S, True), ("chunk_hash", S, True),
        ("collection", S, True), ("synced_at", T, True),
    ),
    ("chunk_id",),
)
QUARANTINE = TableSpec(
    "quarantine",
    _fields(("shard", S, True), ("source_uri", S, True), ("record", S, True), ("reason", S, True), ("detail", S, False)),
    ("source_uri", "record", "reason"),
)
ALL_TABLES = (RAW_DOCUMENTS, CHUNKS, EMBEDDINGS, VECTOR_INDEX, QUARANTINE)  # the shard-partitioned tables

# What each column holds: the column descriptions of every materialization's schema in the UI.
COLUMN_DOCS = {
    "shard": "source shard (top-level folder or prefix); the partition",
    "doc_id": "stable document id: source path relative to the root, plus #record id for JSON/JSONL/Parquet records",
    "title": "document title (first heading, HTML <title>, record title, or the file name)",
    "text": "normalized text (NFC, LF line ends, no trailing spaces)",
    "metadata": "JSON object of the record's other fields",
    "content_hash": "sha256 of title and normalized text: a document is re-chunked only when it changes",
    "source_uri": "file:// or s3:// URI of the source file",
    "source_size": "bytes of the source file when listed",
    "source_version": "mtime in ns (local) or ETag (S3) when listed: a file is re-read only when size or version change",
    "ingested_at": "when this content was first read (kept while the content is unchanged)",
    "chunk_id": "stable chunk id: sha256 of doc_id and chunk_index",
    "chunk_index": "position of the chunk in its document",
    "token_count": "tokens of the chunk by the model's own tokenizer",
    "char_start": "offset of the chunk's first character in the document text",
    "char_end": "offset after the chunk's last character in the document text",
    "chunk_hash": "sha256 of chunker settings and chunk text: the key of vector reuse (with model)",
    "doc_hash": "content_hash of the document the chunk came from",
    "sparse_encoder": "the BM25 encoder (version and language) of sparse_indices and sparse_values; null without sparse vectors",
    "sparse_indices": "term ids (hashed stemmed words) of the chunk's sparse vector",
    "sparse_values": "BM25 term-frequency weight of each term id (the engine applies IDF at query time)",
    "model": "embedding model id and revision (with the weights' digest)",
    "dim": "vector dimension",
    "vector": "float32 embedding",
    "embedded_at": "when the model computed this vector",
    "point_id": "Qdrant point id: a UUID derived from chunk_id",
    "collection": "Qdrant collection the point lives in",
    "synced_at": "when the point was last written to the collection",
    "record": "record id or line (L<n>) in the file; empty for the whole file",
    "reason": "why the input was rejected: a short, stable category (README: What happens to bad input)",
    "detail": "the specific problem",
}
# The (model, chunk_hash) -> vector store that reuse reads (rag_assets/vector_store.py): partitioned by
# model, each file sorted by hash in small row groups, so a lookup reads only what can hold the hashes.
VECTOR_STORE = TableSpec(
    "vector_store",
    Schema(
        NestedField(1, "model", S, required=True),
        NestedField(2, "chunk_hash", S, required=True),
        NestedField(3, "dim", I, required=True),
        NestedField(4, "vector", ListType(6, FloatType(), element_required=True), required=True),
        NestedField(5, "embedded_at", T, required=True),
    ),
    ("chunk_hash",),
    partition_by="model",
    properties=(
        ("write.parquet.row-group-limit", "4096"),  # ~6 MB of vectors, ~260 KB of hashes per group
        # Merging files (compaction) conflicts only with another merge of the same files, never with appends.
        ("write.delete.isolation-level", "snapshot"), ("write.update.isolation-level", "snapshot"),
    ),
)
MAINTAINED_TABLES = ALL_TABLES + (VECTOR_STORE,)

# Many shard runs commit to one table at once, each losing the optimistic-concurrency race to the
# others in turn; pyiceberg retries a conflicting commit up to this many times (its default, 4, is
# too few for 16 concurrent writers: measured in test_postgres.py), backing off up to 10 s.
TABLE_PROPERTIES = {
    "commit.retry.num-retries": "25", "commit.retry.max-wait-ms": "10000",
    # Bounded history at every commit (see rag_assets/maintenance.py for snapshots and files): pyiceberg
    # deletes metadata.json versions beyond the newest few itself, and merges small manifests on append.
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "10",
    "commit.manifest-merge.enabled": "true",
    "commit.manifest.min-count-to-merge": "16",
}

SHARD_PARTITION = RAW_DOCUMENTS.partition_spec  # every shard table's: shard is field 1 in each


@dataclass(frozen=True)
class WriteResult:
    table: str  # fully qualified name
    rows: int
    committed: bool  # False when the partition already held exactly these rows
    snapshot_id: int | None


@functools.lru_cache(maxsize=4)
def _catalog(name: str, properties: tuple[tuple[str, str], ...]) -> Catalog:
    """The catalog client. A SQL catalog creates its own tables on first use; on PostgreSQL, processes
    doing that at the same moment collide in `CREATE TABLE IF NOT EXISTS` (a unique violation on
    pg_type, seen with 16 shard runs starting together; on SQLite, "table iceberg_tables already exists",
    seen with two sync workers building new shards on a fresh home), so the loser retries and then finds them."""
    import tenacity
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((IntegrityError, OperationalError, ProgrammingError)),
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_random(0.05, 0.5),
        reraise=True,
    )
    properties = dict(properties)
    if _is_sql_catalog(name, properties):
        # The SQL catalog with the O(history) parts of a commit removed (see CachingSqlCatalog).
        properties.pop("type", None)
        properties["py-catalog-impl"] = f"{__name__}.CachingSqlCatalog"
    return retrying(load_catalog, name, **properties)


def _is_sql_catalog(name: str, properties: dict[str, str]) -> bool:
    from pyiceberg.catalog import CatalogType, infer_catalog_type

    if "py-catalog-impl" in properties:
        return False
    kind = properties.get("type")
    return (kind.lower() == CatalogType.SQL.value) if kind else infer_catalog_type(name, properties) == CatalogType.SQL


def _make_local_folders(properties: dict[str, str]) -> None:
    """The folders of an embedded catalog (SQLite file) and of a local warehouse, made on first use."""
    uri, warehouse = properties.get("uri", ""), properties.get("warehouse", "")
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    if warehouse.startswith("file://"):  # pyiceberg takes the path as written, without %-decoding
        Path(urlsplit(warehouse).path).mkdir(parents=True, exist_ok=True)


class Lakehouse:
    """The project's Iceberg tables in one namespace of one catalog."""

    def __init__(self, catalog_name: str, properties: dict[str, str], namespace: str):
        _make_local_folders(properties)
        self.catalog = _catalog(catalog_name, tuple(sorted(properties.items())))
        self.namespace = namespace

    def identifier(self, spec: TableSpec) -> str:
        return f"{self.namespace}.{spec.name}"

    def table(self, spec: TableSpec) -> Table:
        """The table, created on first use (safe when several processes race to create it)."""
        ident = self.identifier(spec)
        try:
            return self._evolved(self.catalog.load_table(ident), spec)
        except NoSuchTableError:
            pass
        try:
            self.catalog.create_namespace(self.namespace)
        except NamespaceAlreadyExistsError:
            pass
        except Exception:
            # Lost a race to another creator: the SQL catalog on PostgreSQL reports it as a unique
            # violation rather than NamespaceAlreadyExistsError (seen with 16 shard runs starting at once).
            if not self.catalog.namespace_exists(self.namespace):
                raise
        try:
            return self.catalog.create_table(ident, schema=spec.schema, partition_spec=spec.partition_spec,
                                             sort_order=spec.sort_order, properties=spec.table_properties)
        except TableAlreadyExistsError:
            return self.catalog.load_table(ident)

    @staticmethod
    def _evolved(table: Table, spec: TableSpec) -> Table:
        """A table made by an older version gains the spec's new (optional) columns and the table
        properties; data is untouched."""
        stale_properties = any(table.properties.get(k) != v for k, v in spec.table_properties.items())
        if stale_properties or set(spec.schema.column_names) - set(table.schema().column_names):
            try:
                with table.transaction() as tx:
                    tx.update_schema().union_by_name(spec.schema).commit()
                    tx.set_properties(spec.table_properties)
            except CommitFailedException:  # another process evolved it first
                pass
            table = table.refresh()
        return table

    @staticmethod
    def _projected(spec: TableSpec, columns: tuple[str, ...] | None) -> pa.Schema:
        return spec.arrow_schema if not columns else pa.schema([spec.arrow_schema.field(c) for c in columns])

    READ_ROWS = 8192  # rows per batch read back (~12 MB of 384-d vectors, ~8 MB of chunk text)

    def batches(
        self, spec: TableSpec, row_filter: BooleanExpression, columns: tuple[str, ...] | None = None, table: Table | None = None
    ) -> Iterator[pa.Table]:
        """The matching rows as a stream of small tables, in the spec's types: a whole partition is
        never held at once.

        pyiceberg plans the scan (which data files, pruned by partition and column statistics), but its
        readers hold whole files: `to_arrow_batch_reader` reads every file of a scan whole and all files
        at once (pyiceberg 0.12), and its per-file reader lets Arrow read up to 16 row groups ahead. So
        each planned file is read here with pyarrow's `ParquetFile`, one row group at a time, with
        columns matched by Iceberg field id (a column added to the table after a file was written reads
        as nulls) and the row filter applied per batch."""
        schema = self._projected(spec, columns)
        table = table or self.table(spec)  # `table`: an already loaded one (each load parses all its metadata)
        scan = table.scan(row_filter=row_filter, selected_fields=columns if columns else ("*",))
        tasks = list(scan.plan_files())
        if any(task.delete_files for task in tasks):  # written by another engine in merge-on-read mode
            for batch in scan.to_arrow_batch_reader():
                if batch.num_rows:
                    yield pa.Table.from_batches([batch]).select(schema.names).cast(schema)
            return
        current = table.schema()
        bound = bind(current, row_filter, case_sensitive=True)
        filter_columns = {current.find_column_name(i) for i in extract_field_ids(bound)}
        arrow_filter = None if bound == AlwaysTrue() else expression_to_pyarrow(bound, current)
        wanted = list(schema.names) + sorted(filter_columns - set(schema.names))
        field_ids = {name: current.find_field(name).field_id for name in wanted}
        for task in tasks:
            try:
                stream = table.io.new_input(task.file.file_path).open()
            except FileNotFoundError as exc:
                raise CorruptTable(f"table {self.identifier(spec)}: data file {task.file.file_path} is missing; "
                                   "run `rag-assets repair`") from exc
            with stream:
                parquet = pq.ParquetFile(stream)
                in_file = {int(f.metadata[b"PARQUET:field_id"]): f.name
                           for f in parquet.schema_arrow if f.metadata and b"PARQUET:field_id" in f.metadata}
                if not in_file:  # a file added without field ids (add_files): Iceberg maps its columns by name
                    in_file = {current.find_field(f.name).field_id: f.name for f in parquet.schema_arrow if f.name in field_ids}
                read = [in_file[field_ids[n]] for n in wanted if field_ids[n] in in_file]
                for group in range(parquet.num_row_groups):  # over all groups at once, pyarrow reads several ahead
                    for batch in parquet.iter_batches(self.READ_ROWS, row_groups=[group], columns=read, use_threads=False):
                        rows = pa.table({
                            n: batch.column(in_file[field_ids[n]]) if field_ids[n] in in_file
                            else pa.nulls(batch.num_rows, schema_to_pyarrow(current.find_field(n).field_type))
                            for n in wanted
                        })
                        if arrow_filter is not None:
                            rows = rows.filter(arrow_filter)
                        if rows.num_rows:
                            yield rows.select(schema.names).cast(schema)

    def scan(
        self, spec: TableSpec, row_filter: BooleanExpression, columns: tuple[str, ...] | None = None
    ) -> pa.Table:
        """The matching rows in one table: for narrow projections (keys and hashes), not for text or vectors."""
        schema = self._projected(spec, columns)
        return pa.concat_tables([schema.empty_table(), *self.batches(spec, row_filter, columns)]).combine_chunks()

    def read_partition(self, spec: TableSpec, shard: str, columns: tuple[str, ...] | None = None) -> pa.Table:
        return self.scan(spec, EqualTo("shard", shard), columns)

    def partition_batches(self, spec: TableSpec, shard: str, columns: tuple[str, ...] | None = None) -> Iterator[pa.Table]:
        return self.batches(spec, EqualTo("shard", shard), columns)

    def where_in_batches(
        self, spec: TableSpec, column: str, values: Iterable[str], columns: tuple[str, ...] | None = None,
        extra: BooleanExpression | None = None,
    ) -> Iterator[pa.Table]:
        values = set(values)
        if not values:
            return iter(())
        row_filter: BooleanExpression = In(column, values)
        return self.batches(spec, And(extra, row_filter) if extra is not None else row_filter, columns)

    def row_counts(self, spec: TableSpec) -> dict[str, int]:
        """Rows per shard, from the record counts of the current snapshot's data files in its manifests:
        no data file is read. Tables with delete files (another engine's merge-on-read) are counted by a scan."""
        tasks = list(self.table(spec).scan(selected_fields=("shard",)).plan_files())
        counts: Counter[str] = Counter()
        if any(task.delete_files for task in tasks):
            for batch in self.batches(spec, AlwaysTrue(), ("shard",)):
                counts.update(dict(pl.from_arrow(batch["shard"]).value_counts().iter_rows()))
            return dict(counts)
        for task in tasks:
            counts[task.file.partition[0]] += task.file.record_count
        return {shard: n for shard, n in counts.items() if n}

    def partition_digest(self, spec: TableSpec, shard: str, table: Table | None = None) -> RowDigest:
        digest = RowDigest()
        for batch in self.batches(spec, EqualTo("shard", shard), table=table):
            digest.update(batch)
        return digest

    def writer(self, spec: TableSpec, shard: str) -> PartitionWriter:
        return PartitionWriter(self, spec, shard)

    def replace_partition(self, spec: TableSpec, shard: str, rows: pa.Table) -> WriteResult:
        """Make partition `shard` hold exactly `rows`, in one commit, or none if it already does."""
        with self.writer(spec, shard) as writer:
            writer.add(rows)
            return writer.commit()

    def delete_partition(self, spec: TableSpec, shard: str) -> int:
        """Remove every row of `shard`; returns how many there were."""
        table = self.table(spec)
        count = self.read_partition(spec, shard, ("shard",)).num_rows
        if count:
            table.delete(EqualTo("shard", shard), snapshot_properties={"rag.shard": shard})
        return count

    @staticmethod
    def normalize(spec: TableSpec, rows: pa.Table) -> pa.Table:
        """Table schema, columns in schema order, rows in key order: equal content compares equal."""
        rows = rows.select(spec.arrow_schema.names).cast(spec.arrow_schema)
        if rows.num_rows:
            rows = rows.sort_by([(k, "ascending") for k in spec.key])
        return rows.combine_chunks()


class RowDigest:
    """Order-independent digest of a multiset of rows: a partition's rows give the same digest however
    they are ordered or split into files and batches, so a rewrite can be compared with what the table
    holds without holding either. Polars row hashes under two seeds, summed mod 2^64 each (128 bits).
    Compare digests only within one process: polars does not promise the same hashes across versions."""

    SEEDS = (0x5EED_0001, 0x5EED_0002)

    def __init__(self) -> None:
        self.rows = 0
        self.sums = [np.uint64(0)] * len(self.SEEDS)

    def update(self, rows: pa.Table) -> None:
        if not rows.num_rows:
            return
        frame = pl.from_arrow(rows)
        with np.errstate(over="ignore"):
            self.sums = [s + frame.hash_rows(seed=seed).to_numpy().sum(dtype=np.uint64) for s, seed in zip(self.sums, self.SEEDS)]
        self.rows += rows.num_rows

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RowDigest) and (self.rows, self.sums) == (other.rows, other.sums)


class CorruptTable(RuntimeError):
    """A table that cannot be read: the message names the table and the file, and says what to run."""


class CachingSqlCatalog(SqlCatalog):
    """pyiceberg's SQL catalog, minus the two parts of every load and commit that grew with history.

    - A metadata.json is never rewritten in place (Iceberg writes a new file per version), so the parsed
      metadata is kept per location: loading a table whose pointer has not moved parses nothing. A parse
      costs ~25 us per snapshot held (pydantic validation), and a shard commit loads the table three times.
    - A commit applies its updates to the current metadata without pyiceberg's final deep copy of the
      result (~80 us per snapshot held), as `_Transaction` does; the metadata is frozen and only ever
      replaced, so sharing its unchanged parts is safe (test_tables compares it with pyiceberg's own).
    Everything else (requirements, the optimistic pointer swap, metadata files) is SqlCatalog's own."""

    _PARSED_KEPT = 32  # metadata versions kept parsed (a few tables, a few versions each)

    def __init__(self, name: str, **properties: str):
        super().__init__(name, **properties)
        self._parsed: OrderedDict[str, TableMetadata] = OrderedDict()
        self._parsed_lock = threading.Lock()

    def _remember(self, location: str, metadata: TableMetadata) -> None:
        with self._parsed_lock:
            self._parsed[location] = metadata
            self._parsed.move_to_end(location)
            while len(self._parsed) > self._PARSED_KEPT:
                self._parsed.popitem(last=False)

    def _convert_orm_to_iceberg(self, orm_table) -> Table:
        location = orm_table.metadata_location
        with self._parsed_lock:
            metadata = self._parsed.get(location) if location else None
        if metadata is None:
            try:
                table = super()._convert_orm_to_iceberg(orm_table)
            except (OSError, ValueError, IcebergValidationError) as exc:  # deleted, truncated, not metadata
                raise CorruptTable(
                    f"table {orm_table.table_namespace}.{orm_table.table_name}: its current metadata file {location} "
                    f"cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); run `rag-assets repair`"
                ) from exc
            self._remember(table.metadata_location, table.metadata)
            return table
        return Table(
            identifier=Catalog.identifier_to_tuple(orm_table.table_namespace) + (orm_table.table_name,),
            metadata=metadata,
            metadata_location=location,
            io=self._load_file_io(metadata.properties, location),
            catalog=self,
        )

    def _update_and_stage_table(self, current_table, table_identifier, requirements, updates) -> StagedTable:
        if current_table is None:  # a create: pyiceberg validates the whole new metadata
            return super()._update_and_stage_table(current_table, table_identifier, requirements, updates)
        for requirement in requirements:
            requirement.validate(current_table.metadata)
        metadata = metadata_with_updates(current_table.metadata, updates, current_table.metadata_location)
        location = load_location_provider(metadata.location, metadata.properties).new_table_metadata_file_location(
            self._parse_metadata_version(current_table.metadata_location) + 1
        )
        return StagedTable(
            identifier=table_identifier, metadata=metadata, metadata_location=location,
            io=self._load_file_io(properties=metadata.properties, location=location), catalog=self,
        )

    def commit_table(self, table, requirements, updates):
        response = super().commit_table(table, requirements, updates)
        self._remember(response.metadata_location, response.metadata)  # the next load of it is free
        return response


class _Transaction(Transaction):
    """pyiceberg's transaction, with `table_metadata` built once per state and without a deep copy.

    pyiceberg 0.12 rebuilds the table metadata, then deep-copies all of it, every time a transaction reads
    it (~35 times per delete + append), so a commit cost grew with every snapshot the table held (~2.5 ms
    per snapshot here, RESULTS.md "Commit cost"). The metadata is a frozen pydantic model that pyiceberg
    only ever replaces (`model_copy(update=...)`), never mutates: this applies the staged updates the way
    `update_table_metadata` does, minus its final deep copy, and keeps the result until the base metadata
    or the staged updates change (a retry refreshes both). test_tables checks it against pyiceberg's own."""

    @property
    def table_metadata(self) -> TableMetadata:
        cached = getattr(self, "_metadata_cache", None)
        if cached is None or cached[0] is not self._table.metadata or cached[1] is not self._updates:
            cached = (self._table.metadata, self._updates, metadata_with_updates(self._table.metadata, self._updates))
            self._metadata_cache = cached
        return cached[2]


def transaction(table: Table) -> Transaction:
    """A transaction on `table` whose cost does not grow with the snapshots it holds (use it, not `table.transaction()`)."""
    return _Transaction(table)


def metadata_with_updates(base: TableMetadata, updates: tuple, metadata_location: str | None = None) -> TableMetadata:
    """`pyiceberg.table.update.update_table_metadata(base, updates, metadata_location=...)` without the deep
    copy of the result."""
    from pyiceberg.table.update import _apply_table_update, _TableMetadataUpdateContext, _update_table_metadata_log
    from pyiceberg.utils.datetime import datetime_to_millis

    context = _TableMetadataUpdateContext()
    metadata = base
    for update in updates:
        metadata = _apply_table_update(update, metadata, context)
    if context.has_changes():
        if metadata_location:
            metadata = _update_table_metadata_log(metadata, metadata_location, base.last_updated_ms)
        if base.last_updated_ms == metadata.last_updated_ms:
            metadata = metadata.model_copy(update={"last_updated_ms": datetime_to_millis(datetime.now().astimezone())})
    metadata.spec().check_compatible(metadata.schema())
    metadata.sort_order().check_compatible(metadata.schema())
    return metadata


class PartitionWriter:
    """Replaces one shard's partition with rows that arrive in batches, holding only a buffer of them.

    Rows are streamed into one Parquet data file (pyiceberg's own Parquet writer, so the file has the
    table's field ids and column statistics); `commit()` then deletes the partition's old files and adds
    the new one in a single Iceberg transaction, the same two operations `Table.overwrite` commits, which
    pyiceberg retries against newer metadata when another shard committed first. When the new rows equal
    the partition's (same `RowDigest`), the file is discarded and nothing is committed. A writer left
    without `commit()` (an error, or a killed process) leaves the table untouched; at most an unreferenced
    data file remains, which Iceberg's orphan-file maintenance removes.
    """

    BUFFER_BYTES = 8 * 1024 * 1024  # rows kept before they are written out as one Parquet row group

    def __init__(self, lake: Lakehouse, spec: TableSpec, shard: str):
        self.lake, self.spec, self.shard = lake, spec, shard
        self.table = lake.table(spec)
        self.digest = RowDigest()
        self._file_schema = schema_to_pyarrow(self.table.schema(), include_field_ids=True)
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self._output = None
        self._file_writer = None

    @property
    def rows(self) -> int:
        return self.digest.rows

    def add(self, rows: pa.Table | list[dict]) -> None:
        rows = pa.Table.from_pylist(rows, self.spec.arrow_schema) if isinstance(rows, list) else rows
        rows = rows.select(self.spec.arrow_schema.names).cast(self.spec.arrow_schema)
        if not rows.num_rows:
            return
        if pc.any(pc.not_equal(rows["shard"], self.shard)).as_py():
            raise ValueError(f"rows for {self.spec.name} partition {self.shard!r} carry another shard value")
        self.digest.update(rows)
        self._pending.append(rows)
        self._pending_bytes += rows.nbytes
        if self._pending_bytes >= self.BUFFER_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        rows = pa.concat_tables(self._pending).combine_chunks()
        self._pending, self._pending_bytes = [], 0
        if self._file_writer is None:
            self._partition_key = PartitionKey(
                field_values=[PartitionFieldValue(field=SHARD_PARTITION.fields[0], value=self.shard)],
                partition_spec=self.table.spec(), schema=self.table.schema(),
            )
            path = load_location_provider(self.table.location(), self.table.properties).new_data_location(
                data_file_name=f"00000-0-{uuid.uuid4()}.parquet", partition_key=self._partition_key
            )
            self._output = self.table.io.new_output(path)
            self._file_writer = FileFormatFactory.get(FileFormat.PARQUET).create_writer(
                self._output, self.table.schema(), self.table.properties
            )
        self._file_writer.write(rows.cast(self._file_schema))

    def _data_file(self) -> DataFile | None:
        self._flush()
        if self._file_writer is None:
            return None
        statistics = self._file_writer.close()
        return DataFile.from_args(
            content=DataFileContent.DATA,
            file_path=self._output.location,
            file_format=FileFormat.PARQUET,
            partition=self._partition_key.partition,
            file_size_in_bytes=len(self._output),
            sort_order_id=None,
            spec_id=self.table.metadata.default_spec_id,
            equality_ids=None,
            key_metadata=None,
            **statistics.to_serialized_dict(),
        )

    COMMIT_ATTEMPTS = 5  # against another writer of the same partition (two syncs of one shard at once)

    def commit(self) -> WriteResult:
        """Make the partition hold exactly the written rows. The delete is staged even on an empty
        partition: its predicate makes pyiceberg's validation refuse the commit when another writer added
        rows to this partition meanwhile (else both would append: duplicates). Refused, the partition is
        compared again and the commit redone against it, so the last writer wins and nothing doubles."""
        data_file = self._data_file()
        props = {"rag.shard": self.shard}
        for attempt in range(self.COMMIT_ATTEMPTS):
            table = self.table.refresh()
            if self.lake.partition_digest(self.spec, self.shard, table) == self.digest:
                self.abort()
                snapshot = table.current_snapshot()
                return WriteResult(self.lake.identifier(self.spec), self.rows, False, snapshot.snapshot_id if snapshot else None)
            try:
                with _Transaction(table) as tx, warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Delete operation did not match any records")  # an empty partition
                    tx.delete(EqualTo("shard", self.shard), snapshot_properties=props)
                    if data_file is not None:
                        with tx.update_snapshot(snapshot_properties=props).merge_append() as append:
                            append.append_data_file(data_file)
            except ValidationException:
                if attempt == self.COMMIT_ATTEMPTS - 1:
                    raise
                log.info("%s partition %r changed by another writer; comparing again", self.spec.name, self.shard)
                continue
            break
        self._output = None  # committed: the file now belongs to the table
        snapshot = table.current_snapshot()
        return WriteResult(self.lake.identifier(self.spec), self.rows, True, snapshot.snapshot_id if snapshot else None)

    def abort(self) -> None:
        """Discard the uncommitted data file, if one was started."""
        if self._file_writer is not None and self._output is not None:
            try:
                self._file_writer.close()
            except Exception:  # already closed, or never written to
                pass
            try:
                self.table.io.delete(self._output.location)
            except OSError:
                log.warning("could not remove uncommitted data file %s", self._output.location)
            self._output = None

    def __enter__(self) -> PartitionWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._output is not None:
            self.abort()
