"""raw_documents' rules: which files are read, copied over or quarantined, and the counts it reports."""

import datetime as dt

import polars as pl

from rag_assets.parsing import Document
from rag_assets.source import LocalSource, ShardListing, SourceFile
from rag_assets.steps.documents import PreviousDocuments, Quarantine, document_counts, document_row, plan_reads

SRC = LocalSource("/src")  # only its URI scheme is used: nothing is read


def previous(versions: dict[str, set], rejects: dict[str, list] | None = None) -> PreviousDocuments:
    docs = pl.DataFrame(schema={"doc_id": pl.String, "content_hash": pl.String, "ingested_at": pl.Datetime("us", "UTC")})
    return PreviousDocuments(docs, versions, rejects or {})


def test_plan_reads_reads_new_and_modified_files_and_copies_unchanged_ones():
    uri = SRC.uri
    listing = ShardListing("s", [
        SourceFile("s/same.md", 10, "v1"),
        SourceFile("s/resized.md", 11, "v1"),
        SourceFile("s/touched.md", 10, "v2"),
        SourceFile("s/new.md", 5, "v1"),
    ])
    old = previous({uri("s/same.md"): {(10, "v1")}, uri("s/resized.md"): {(10, "v1")}, uri("s/touched.md"): {(10, "v1")}})
    plan = plan_reads(SRC, listing, old, max_document_mb=1)
    assert plan.unchanged == [uri("s/same.md")]
    assert [f.path for f in plan.to_read] == ["s/resized.md", "s/touched.md", "s/new.md"]
    assert plan.quarantine.rows == []


def test_plan_reads_quarantines_listing_rejects_and_oversized_files_without_reading_them():
    listing = ShardListing("s", [SourceFile("s/fifo", 0, "v", rejected="not a regular file"), SourceFile("s/big.txt", 2 * 1024 * 1024, "v")])
    plan = plan_reads(SRC, listing, previous({}), max_document_mb=1)
    assert plan.to_read == [] and plan.unchanged == []
    assert [(r["source_uri"], r["reason"]) for r in plan.quarantine.rows] == [(SRC.uri("s/fifo"), "unreadable"), (SRC.uri("s/big.txt"), "too_large")]
    assert plan.quarantine.rows[1]["detail"] == "2097152 bytes > 1 MiB limit"
    assert plan.quarantine.reasons() == {"unreadable": 1, "too_large": 1}


def test_an_unchanged_file_keeps_its_quarantine_rows():
    uri = SRC.uri("s/records.jsonl")
    kept = {"shard": "s", "source_uri": uri, "record": "line 3", "reason": "malformed_json", "detail": "x"}
    plan = plan_reads(SRC, ShardListing("s", [SourceFile("s/records.jsonl", 9, "v")]), previous({uri: {(9, "v")}}, {uri: [kept]}), 1)
    assert plan.unchanged == [uri] and plan.quarantine.rows == [kept]


def test_a_file_whose_rows_carry_two_versions_is_read_again():
    """Rows of one file from two versions (a file that changed while it was listed) prove nothing: read it."""
    uri = SRC.uri("s/a.md")
    plan = plan_reads(SRC, ShardListing("s", [SourceFile("s/a.md", 3, "v2")]), previous({uri: {(3, "v1"), (3, "v2")}}), 1)
    assert [f.path for f in plan.to_read] == ["s/a.md"]


def test_document_row_and_counts():
    stamp = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    row = document_row("s", Document("s/a.md", "A", "text", "{}", "h1"), "file:///src/s/a.md", SourceFile("s/a.md", 4, "v"), stamp)
    assert row == {"shard": "s", "doc_id": "s/a.md", "title": "A", "text": "text", "metadata": "{}", "content_hash": "h1",
                   "source_uri": "file:///src/s/a.md", "source_size": 4, "source_version": "v", "ingested_at": stamp}
    now = pl.DataFrame({"doc_id": ["a", "b", "c"], "content_hash": ["1", "2x", "3"]})
    before = pl.DataFrame({"doc_id": ["a", "b", "d"], "content_hash": ["1", "2", "4"]})
    assert document_counts(now, before) == {"documents": 3, "new_or_changed_documents": 2, "removed_documents": 1}


def test_quarantine_table_has_the_table_schema():
    q = Quarantine("s")
    q.reject("file:///x", "", "binary", "")
    assert q.table().num_rows == 1 and q.table().column("reason").to_pylist() == ["binary"]
