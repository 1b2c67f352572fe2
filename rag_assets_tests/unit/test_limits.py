"""Bounds on hostile input, on small in-memory inputs: decompression, JSON depth, names, chunk pieces, errors."""

import gzip
import io

import pyarrow as pa
import pyarrow.parquet as pq

from rag_assets.chunking import cut, segments
from rag_assets.parsing import Rejection, gunzip, parse_file
from rag_assets.source import bad_name, bad_shard_name, printable
from rag_assets.sync import root_cause


def test_gunzip_stops_at_the_limit_and_reads_every_member():
    bomb = gzip.compress(b"\0" * 10_000_000, 9)
    assert len(bomb) < 20_000
    rejected = gunzip(bomb, 1_000_000)
    assert isinstance(rejected, Rejection) and rejected.reason == "too_large"
    assert gunzip(gzip.compress(b"one ") + gzip.compress(b"two"), 100) == b"one two"  # concatenated members
    assert gunzip(gzip.compress(b"x" * 100), 100) == b"x" * 100  # exactly the limit fits
    assert gunzip(gzip.compress(b"y" * 1000)[:-20], 10_000).reason == "corrupt_gzip"  # truncated
    assert gunzip(b"\x1f\x8b not gzip", 100).reason == "corrupt_gzip"


def test_json_nested_too_deep_is_a_rejection_and_the_other_lines_land():
    deep = "[" * 100_000 + "]" * 100_000
    items = list(parse_file("s/d.jsonl", ('{"_id": "a", "text": "fine"}\n' + deep + "\n").encode()))
    assert [getattr(i, "doc_id", None) for i in items] == ["s/d.jsonl#a", None]
    assert (items[1].record, items[1].reason) == ("L2", "malformed_json")
    assert "recursion limit" in items[1].detail
    (whole,) = parse_file("s/d.json", deep.encode())
    assert whole.reason == "malformed_json"


def test_a_metadata_field_too_deep_to_store_is_a_rejection():
    from rag_assets.parsing import RecordFields, _record

    nested: list = []
    for _ in range(100_000):  # built in Python: a reader with a higher limit could hand it over
        nested = [nested]
    item = _record("s/r.parquet", 1, {"_id": "r", "text": "fine", "extra": nested}, RecordFields(), set())
    assert (item.record, item.reason) == ("L1", "malformed_json") and "recursion limit" in item.detail


def test_a_parquet_value_larger_than_the_limit_is_refused_from_the_footer():
    buffer = io.BytesIO()
    pq.write_table(pa.table({"_id": ["v"], "text": ["b" * 2_000_000]}), buffer, compression="zstd")
    assert buffer.tell() < 10_000
    (item,) = parse_file("s/v.parquet", buffer.getvalue(), max_bytes=1_000_000)
    assert item.reason == "too_large" and "inflates to" in item.detail


def test_names_that_cannot_be_stored():
    latin1 = b"caf\xe9.md".decode("utf-8", "surrogateescape")  # how os.scandir spells undecodable bytes
    assert printable(latin1) == "caf\\xe9.md"
    assert "not valid UTF-8" in bad_name(latin1) and "control" in bad_name("a\nb.md")
    assert bad_name("données 日本語 ✓.md") is None
    assert bad_shard_name("n" * 200) is None and "URL-quoted" in bad_shard_name("n" * 201)
    assert "URL-quoted" in bad_shard_name("日" * 30)  # 30 characters, 270 bytes once quoted


def test_segments_cut_at_line_breaks_and_cover_the_text():
    text = ("word " * 30 + "\n") * 100
    pieces = segments(text, 1000)
    assert "".join(p for _, p in pieces) == text and all(len(p) <= 1000 for _, p in pieces)
    assert all(p.endswith("\n") for _, p in pieces[:-1])  # at a line break when there is one
    assert [o for o, _ in pieces] == [sum(len(p) for _, p in pieces[:i]) for i in range(len(pieces))]
    no_breaks = "x" * 2500
    assert [(o, len(p)) for o, p in segments(no_breaks, 1000)] == [(0, 1000), (1000, 1000), (2000, 500)]
    assert cut("abcdefg", 3) == [(0, "abc"), (3, "def"), (6, "g")] and cut("ab", 3) == [(0, "ab")]


def test_the_root_cause_is_the_innermost_error():
    from dagster._utils.error import serializable_error_info_from_exc_info

    try:
        try:
            raise PermissionError(13, "Permission denied", "s/a.md")
        except PermissionError as inner:
            raise RuntimeError("Error occurred while executing op") from inner
    except RuntimeError:
        import sys

        info = serializable_error_info_from_exc_info(sys.exc_info())
    assert root_cause(info) == "PermissionError: [Errno 13] Permission denied: 's/a.md'"
