"""raw_documents: which files to read, the rows a document becomes, and the quarantine of what cannot be read.

Rule (file by size + version): a file whose size and version (mtime or ETag) are those of the previous
partition's rows keeps its rows, and its quarantine rows, without being read again; only new or modified
files cost a read. Inside a read file, a document keeps its `ingested_at` when its content hash is unchanged.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from rag_assets.parsing import Document, RecordFields, parse_file
from rag_assets.source import ShardListing, Source, SourceFile
from rag_assets.tables import CHUNKS, QUARANTINE, RAW_DOCUMENTS, Lakehouse

DOCUMENT_BATCH = 256  # documents parsed before they are handed to the table writer


class Quarantine:
    """The shard's rejected inputs, one row each with the reason (never a silent drop)."""

    def __init__(self, shard: str, rows: list[dict] | None = None):
        self.shard = shard
        self.rows: list[dict] = list(rows or [])

    def reject(self, uri: str, record: str, reason: str, detail: str) -> None:
        self.rows.append({"shard": self.shard, "source_uri": uri, "record": record, "reason": reason, "detail": detail})

    def reasons(self) -> dict[str, int]:
        return dict(Counter(r["reason"] for r in self.rows))

    def table(self) -> pa.Table:
        return pa.Table.from_pylist(self.rows, QUARANTINE.arrow_schema)

    SAMPLE = 10  # rows shown in the materialization

    def sample_markdown(self) -> str:
        """The first rejected inputs as a Markdown table, and where the rest are (the UI shows it per shard)."""
        if not self.rows:
            return "nothing quarantined"
        cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")[:200]  # noqa: E731
        lines = ["| source | record | reason | detail |", "| --- | --- | --- | --- |"]
        lines += [f"| {cell(r['source_uri'])} | {cell(r['record'])} | {cell(r['reason'])} | {cell(r['detail'])} |"
                  for r in self.rows[:self.SAMPLE]]
        more = len(self.rows) - self.SAMPLE
        where = f"Iceberg table `quarantine`, partition shard = {self.shard!r}"
        return "\n".join(lines) + (f"\n\n{more} more in the " if more > 0 else "\n\nAll rows are in the ") + where + "."


@dataclass(frozen=True)
class PreviousDocuments:
    """What the shard's previous raw_documents and quarantine partitions say about its files."""

    documents: pl.DataFrame  # doc_id, content_hash, ingested_at
    file_versions: dict[str, set[tuple[int, str]]]  # source_uri -> {(size, version)} of its rows
    rejects: dict[str, list[dict]]  # source_uri -> its quarantine rows


def read_previous(lake: Lakehouse, shard: str) -> PreviousDocuments:
    old = pl.from_arrow(lake.read_partition(
        RAW_DOCUMENTS, shard, ("doc_id", "content_hash", "ingested_at", "source_uri", "source_size", "source_version")))
    versions: dict[str, set[tuple[int, str]]] = {}  # per file, not per document
    for uri, size, version in old.select("source_uri", "source_size", "source_version").unique().iter_rows():
        versions.setdefault(uri, set()).add((size, version))
    rejects: dict[str, list[dict]] = {}
    for r in lake.read_partition(QUARANTINE, shard).to_pylist():  # one small row per rejected input
        rejects.setdefault(r["source_uri"], []).append(r)
    return PreviousDocuments(old.select("doc_id", "content_hash", "ingested_at"), versions, rejects)


@dataclass
class ReadPlan:
    quarantine: Quarantine  # rejected without a read (listing, size), or kept from before; reading adds more
    to_read: list[SourceFile] = field(default_factory=list)  # new or modified files
    unchanged: list[str] = field(default_factory=list)  # URIs whose previous rows are copied over


LISTING_REASONS = {"bad_name": "bad_name", "special": "special_file"}  # else "unreadable" (links, stat errors)


def plan_reads(src: Source, listing: ShardListing, previous: PreviousDocuments, max_document_mb: int) -> ReadPlan:
    """Sort the shard's listed files into files to read, files to copy over and files to reject."""
    limit = max_document_mb * 1024 * 1024
    plan = ReadPlan(Quarantine(listing.shard))
    for f in listing.files:
        uri = src.uri(f.path)
        if f.rejected:  # refused by the listing: its `version` names the kind
            plan.quarantine.reject(uri, "", LISTING_REASONS.get(f.version, "unreadable"), f.rejected)
        elif f.size > limit:
            plan.quarantine.reject(uri, "", "too_large", f"{f.size} bytes > {max_document_mb} MiB limit")
        elif previous.file_versions.get(uri) == {(f.size, f.version)}:
            plan.unchanged.append(uri)
            plan.quarantine.rows.extend(previous.rejects.get(uri, []))
        else:
            plan.to_read.append(f)
    return plan


def document_row(shard: str, doc: Document, uri: str, file: SourceFile, stamp: dt.datetime) -> dict:
    return {
        "shard": shard, "doc_id": doc.doc_id, "title": doc.title, "text": doc.text, "metadata": doc.metadata,
        "content_hash": doc.content_hash, "source_uri": uri, "source_size": file.size, "source_version": file.version,
        "ingested_at": stamp,  # or the previous row's, when the content is the same (`keep_stamps`)
    }


def copied_documents(lake: Lakehouse, shard: str, uris: list[str]) -> Iterator[pa.Table]:
    """The previous rows of unchanged files, a batch at a time."""
    if not uris:
        return
    keep = pa.array(sorted(uris), pa.string())
    for batch in lake.partition_batches(RAW_DOCUMENTS, shard):
        yield batch.filter(pc.is_in(batch["source_uri"], value_set=keep))


def read_documents(
    src: Source, files: list[SourceFile], fields: RecordFields, stamp: dt.datetime, quarantine: Quarantine,
    max_document_mb: int,
) -> Iterator[pa.Table]:
    """Rows of the documents in `files`, read a few files at a time and yielded DOCUMENT_BATCH at a time;
    what cannot be read or parsed goes to `quarantine`."""
    pending: list[dict] = []
    for f, data in src.read_many(files):  # streamed: only a few files' bytes are held at a time
        uri = src.uri(f.path)
        if isinstance(data, OSError):  # vanished or unreadable since listing
            quarantine.reject(uri, "", "unreadable", f"{type(data).__name__}: {data.strerror or data}")
            continue
        for item in parse_file(f.path, data, fields, max_document_mb * 1024 * 1024):
            if not isinstance(item, Document):
                quarantine.reject(uri, item.record, item.reason, item.detail)
                continue
            pending.append(document_row(quarantine.shard, item, uri, f, stamp))
            if len(pending) >= DOCUMENT_BATCH:
                yield pa.Table.from_pylist(pending, RAW_DOCUMENTS.arrow_schema)
                pending = []
        del data
    yield pa.Table.from_pylist(pending, RAW_DOCUMENTS.arrow_schema)


def document_counts(documents: pl.DataFrame, previous: pl.DataFrame) -> dict[str, int]:
    """documents, new_or_changed_documents and removed_documents: (doc_id, content_hash) now and before."""
    return {
        "documents": documents.height,
        "new_or_changed_documents": documents.join(previous, on=["doc_id", "content_hash"], how="anti").height,
        "removed_documents": previous.join(documents, on="doc_id", how="anti").height,
    }


def lost_points(lake: Lakehouse, shard: str, previous: pl.DataFrame, docs: pl.DataFrame) -> tuple[int, int]:
    """(points of the shard whose documents `docs` no longer holds, points of the shard): what the run would
    remove (the deletion guard's measure; a point is a chunk). The chunks are read only when a document is gone."""
    gone = previous.select("doc_id").join(docs.select("doc_id"), on="doc_id", how="anti")
    if gone.is_empty():
        return 0, 0
    chunk_docs = pl.from_arrow(lake.read_partition(CHUNKS, shard, ("doc_id",)))
    return chunk_docs.join(gone, on="doc_id", how="semi").height, chunk_docs.height
