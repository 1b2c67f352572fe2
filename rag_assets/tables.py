"""The Iceberg tables: their schemas and the one way each shard's partition is read and replaced.

Every table has a `shard` column with an identity partition on it. A materialization of shard S
replaces exactly partition S in a single catalog commit (delete + append in one transaction);
pyiceberg retries that commit itself when another shard committed first. A write whose rows equal
what the partition already holds commits nothing, so re-running a partition is a no-op.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import CommitFailedException, NamespaceAlreadyExistsError, NoSuchTableError, TableAlreadyExistsError
from pyiceberg.expressions import And, BooleanExpression, EqualTo, In
from pyiceberg.partitioning import PartitionField, PartitionSpec
from pyiceberg.schema import Schema
from pyiceberg.table import Table
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
    key: tuple[str, ...]  # unique within a shard; the sort order of written rows

    @property
    def arrow_schema(self) -> pa.Schema:
        return self.schema.as_arrow()


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
ALL_TABLES = (RAW_DOCUMENTS, CHUNKS, EMBEDDINGS, VECTOR_INDEX, QUARANTINE)

# Many shard runs commit to one table at once, each losing the optimistic-concurrency race to the
# others in turn; pyiceberg retries a conflicting commit up to this many times (its default, 4, is
# too few for 16 concurrent writers: measured in test_postgres.py), backing off up to 10 s.
TABLE_PROPERTIES = {"commit.retry.num-retries": "25", "commit.retry.max-wait-ms": "10000"}

SHARD_PARTITION = PartitionSpec(PartitionField(source_id=1, field_id=1000, transform=IdentityTransform(), name="shard"))


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
    pg_type, seen with 16 shard runs starting together), so the loser retries and then finds them."""
    import tenacity
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((IntegrityError, ProgrammingError)),
        stop=tenacity.stop_after_attempt(5),
        wait=tenacity.wait_random(0.05, 0.5),
        reraise=True,
    )
    return retrying(load_catalog, name, **dict(properties))


class Lakehouse:
    """The project's Iceberg tables in one namespace of one catalog."""

    def __init__(self, catalog_name: str, properties: dict[str, str], namespace: str):
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
            return self.catalog.create_table(ident, schema=spec.schema, partition_spec=SHARD_PARTITION, properties=TABLE_PROPERTIES)
        except TableAlreadyExistsError:
            return self.catalog.load_table(ident)

    @staticmethod
    def _evolved(table: Table, spec: TableSpec) -> Table:
        """A table made by an older version gains the spec's new (optional) columns and the table
        properties; data is untouched."""
        stale_properties = any(table.properties.get(k) != v for k, v in TABLE_PROPERTIES.items())
        if stale_properties or set(spec.schema.column_names) - set(table.schema().column_names):
            try:
                with table.transaction() as tx:
                    tx.update_schema().union_by_name(spec.schema).commit()
                    tx.set_properties(TABLE_PROPERTIES)
            except CommitFailedException:  # another process evolved it first
                pass
            table = table.refresh()
        return table

    @staticmethod
    def _projected(spec: TableSpec, columns: tuple[str, ...] | None) -> pa.Schema:
        return spec.arrow_schema if not columns else pa.schema([spec.arrow_schema.field(c) for c in columns])

    def scan(
        self, spec: TableSpec, row_filter: BooleanExpression, columns: tuple[str, ...] | None = None
    ) -> pa.Table:
        table = self.table(spec)
        selected = columns if columns else ("*",)
        result = table.scan(row_filter=row_filter, selected_fields=selected).to_arrow()
        schema = self._projected(spec, columns)
        return result.select(schema.names).cast(schema) if result.num_rows else schema.empty_table()

    def read_partition(self, spec: TableSpec, shard: str, columns: tuple[str, ...] | None = None) -> pa.Table:
        return self.scan(spec, EqualTo("shard", shard), columns)

    def read_where_in(
        self, spec: TableSpec, column: str, values: list[str], columns: tuple[str, ...] | None = None,
        extra: BooleanExpression | None = None,
    ) -> pa.Table:
        if not values:
            return self._projected(spec, columns).empty_table()
        row_filter: BooleanExpression = In(column, set(values))
        return self.scan(spec, And(extra, row_filter) if extra is not None else row_filter, columns)

    def replace_partition(self, spec: TableSpec, shard: str, rows: pa.Table) -> WriteResult:
        """Make partition `shard` hold exactly `rows`, in one commit, or none if it already does."""
        rows = self.normalize(spec, rows)
        if rows.num_rows and pc.any(pc.not_equal(rows["shard"], shard)).as_py():
            raise ValueError(f"rows for {spec.name} partition {shard!r} carry another shard value")
        table = self.table(spec)
        current = self.normalize(spec, self.read_partition(spec, shard))
        if current.equals(rows):
            snapshot = table.current_snapshot()
            return WriteResult(self.identifier(spec), rows.num_rows, False, snapshot.snapshot_id if snapshot else None)
        props = {"rag.shard": shard}
        if not current.num_rows:
            table.append(rows, snapshot_properties=props)
        elif not rows.num_rows:
            table.delete(EqualTo("shard", shard), snapshot_properties=props)
        else:
            table.overwrite(rows, overwrite_filter=EqualTo("shard", shard), snapshot_properties=props)
        snapshot = table.current_snapshot()
        return WriteResult(self.identifier(spec), rows.num_rows, True, snapshot.snapshot_id if snapshot else None)

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
