"""Turn one source file's bytes into documents, or into rejections that carry the reason.

Nothing here raises on bad input: every problem becomes a `Rejection`, so a shard always finishes
and quarantine says exactly what was left out and why.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

from rag_assets.source import format_of

MARKUP_FORMATS = (".md", ".markdown", ".txt", ".rst")
RECORD_FORMATS = (".json", ".jsonl", ".parquet")


@dataclass(frozen=True)
class RecordFields:
    """Field names of JSON/JSONL/Parquet records (BEIR / HotpotQA shape by default)."""

    id: str = "_id"
    title: str = "title"
    text: str = "text"


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    text: str
    metadata: str  # JSON object of the record's other fields
    content_hash: str


@dataclass(frozen=True)
class Rejection:
    record: str  # "" for the whole file, else the record id or line
    reason: str  # short, stable category
    detail: str = ""


def normalize(text: str) -> str:
    """Canonical form hashed and stored: NFC, LF line ends, no trailing spaces, no NULs."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\n\0{text}".encode()).hexdigest()


def make_document(doc_id: str, title: str, text: str, metadata: dict | None = None) -> Document | Rejection:
    title, text = normalize(title), normalize(text)
    if not text:
        return Rejection(doc_id.partition("#")[2], "empty", "no text after extraction")
    meta = json.dumps(metadata or {}, sort_keys=True, ensure_ascii=False, default=str)
    return Document(doc_id, title, text, meta, content_hash(title, text))


def looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\0" in sample:
        return True
    control = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return bool(sample) and control / len(sample) > 0.05


def decode_text(data: bytes) -> str | Rejection:
    if looks_binary(data):
        return Rejection("", "binary", "file holds binary data, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Rejection("", "invalid_utf8", f"not valid UTF-8 at byte {exc.start}")


DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # RAG_MAX_DOCUMENT_MB's default


def gunzip(data: bytes, max_bytes: int) -> bytes | Rejection:
    """The decompressed bytes of a gzip file (every member), inflated a piece at a time and abandoned as
    soon as they pass `max_bytes`: a bomb of a few MB that inflates to GBs never reaches memory."""
    out, total, rest = [], 0, data
    try:
        while rest:
            inflater = zlib.decompressobj(wbits=31)  # gzip framing
            chunk = inflater.decompress(rest, max_bytes + 1 - total)
            while True:
                out.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    return Rejection("", "too_large", f"decompresses to more than {max_bytes} bytes (the document size limit)")
                if inflater.eof or not inflater.unconsumed_tail:
                    break
                chunk = inflater.decompress(inflater.unconsumed_tail, max_bytes + 1 - total)
            if not inflater.eof:
                return Rejection("", "corrupt_gzip", "compressed data ends early")
            rest = inflater.unused_data.lstrip(b"\0")  # concatenated members; trailing zero padding
    except zlib.error as exc:
        return Rejection("", "corrupt_gzip", str(exc))
    return b"".join(out)


def parse_file(
    path: str, data: bytes, fields: RecordFields = RecordFields(), max_bytes: int = DEFAULT_MAX_BYTES
) -> Iterator[Document | Rejection]:
    """Documents of one file; `path` is relative to the source root and becomes the doc_id prefix.
    `max_bytes` bounds the decompressed file and every single value in it."""
    fmt = format_of(path)
    if fmt is None:
        yield Rejection("", "unsupported_type", f"no reader for {path.rsplit('/', 1)[-1]!r}")
        return
    if path.lower().endswith(".gz"):
        data = gunzip(data, max_bytes)
        if isinstance(data, Rejection):
            yield data
            return
    if not data.strip():
        yield Rejection("", "empty", "file is empty")
        return
    if fmt in MARKUP_FORMATS:
        text = decode_text(data)
        yield text if isinstance(text, Rejection) else make_document(path, title_of_markup(text, path), text)
    elif fmt in (".html", ".htm"):
        yield parse_html(path, data)
    elif fmt == ".parquet":
        yield from parse_parquet(path, data, fields, max_bytes)
    else:
        text = decode_text(data)
        if isinstance(text, Rejection):
            yield text
        elif fmt == ".jsonl":
            yield from parse_jsonl(path, text, fields)
        else:
            yield from parse_json(path, text, fields)


def title_of_markup(text: str, path: str) -> str:
    """First Markdown heading, else first line when an RST underline follows it, else the file name."""
    lines = text.lstrip().splitlines()
    for i, line in enumerate(lines[:50]):
        if m := re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line):
            return m.group(1)
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"([=\-~^\"'`#*+])\1{2,}\s*", nxt) and len(nxt.strip()) >= len(line.strip()):
            return line.strip()
    name = path.rsplit("/", 1)[-1]
    return re.sub(r"(\.gz)?$", "", name, flags=re.I).rsplit(".", 1)[0]


_BLOCK_TAGS = "p,div,li,ul,ol,section,article,header,footer,main,nav,aside,table,tr,pre,blockquote,dd,dt,hr,figure"


def parse_html(path: str, data: bytes) -> Document | Rejection:
    """Visible text of an HTML page; scripts and styles dropped, block structure kept as blank lines."""
    from selectolax.lexbor import LexborHTMLParser

    if looks_binary(data):
        return Rejection("", "binary", "file holds binary data, not HTML")
    tree = LexborHTMLParser(data)
    title_node = tree.css_first("title")
    tree.strip_tags(["script", "style", "noscript", "template", "svg", "head"])
    for node in tree.css(_BLOCK_TAGS):
        node.insert_after("\n\n")
    for node in tree.css("br"):
        node.insert_after("\n")
    for node in tree.css("h1,h2,h3,h4,h5,h6"):  # keep headings as Markdown so chunking sees sections
        node.insert_before("\n\n" + "#" * int(node.tag[1]) + " ")
        node.insert_after("\n\n")
    root = tree.body or tree.root
    text = re.sub(r"\n{3,}", "\n\n", root.text(separator="") if root else "")
    title = title_node.text().strip() if title_node else title_of_markup(text, path)
    return make_document(path, title, text)


TOO_DEEP = "nested deeper than the JSON reader's recursion limit"


def _record(path: str, index: int, rec: object, fields: RecordFields, seen: set[str]) -> Document | Rejection:
    try:
        return _record_of(path, index, rec, fields, seen)
    except RecursionError:  # a metadata field nested too deep to serialize
        return Rejection(f"L{index}", "malformed_json", f"a field is {TOO_DEEP}")


def _record_of(path: str, index: int, rec: object, fields: RecordFields, seen: set[str]) -> Document | Rejection:
    where = f"L{index}"
    if not isinstance(rec, dict):
        return Rejection(where, "malformed_record", f"expected an object, got {type(rec).__name__}")
    raw_id = rec.get(fields.id)
    record_id = where if raw_id is None or str(raw_id) == "" else str(raw_id)
    if record_id in seen:
        return Rejection(record_id, "duplicate_id", f"{fields.id}={record_id!r} appears earlier in the file")
    seen.add(record_id)
    text = rec.get(fields.text)
    if not isinstance(text, str):
        return Rejection(record_id, "malformed_record", f"field {fields.text!r} missing or not a string")
    title = rec.get(fields.title)
    meta = {k: v for k, v in rec.items() if k not in (fields.id, fields.title, fields.text)}
    return make_document(f"{path}#{record_id}", title if isinstance(title, str) else "", text, meta)


def parse_jsonl(path: str, text: str, fields: RecordFields) -> Iterator[Document | Rejection]:
    seen: set[str] = set()
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Rejection(f"L{lineno}", "malformed_json", exc.msg)
            continue
        except RecursionError:
            yield Rejection(f"L{lineno}", "malformed_json", f"the line is {TOO_DEEP}")
            continue
        yield _record(path, lineno, rec, fields, seen)


def parse_json(path: str, text: str, fields: RecordFields) -> Iterator[Document | Rejection]:
    """A list of records, an object holding one list of records, or a single record."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Rejection("", "malformed_json", f"{exc.msg} at line {exc.lineno}")
        return
    except RecursionError:
        yield Rejection("", "malformed_json", f"the file is {TOO_DEEP}")
        return
    if isinstance(obj, dict) and fields.text not in obj:
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = lists[0] if len(lists) == 1 else obj
    records = obj if isinstance(obj, list) else [obj]
    seen: set[str] = set()
    for index, rec in enumerate(records, start=1):
        yield _record(path, index, rec, fields, seen)


def parse_parquet(path: str, data: bytes, fields: RecordFields, max_bytes: int = DEFAULT_MAX_BYTES) -> Iterator[Document | Rejection]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several types for a corrupt footer
        yield Rejection("", "malformed_parquet", str(exc)[:500])
        return
    # A few KB of zstd can hold a 200 MB string: the footer says how large each column chunk inflates,
    # so a file whose row group would not fit the limit is refused before anything is decompressed.
    for group in range(pf.metadata.num_row_groups):
        inflated = pf.metadata.row_group(group).total_byte_size
        if inflated > max_bytes:
            yield Rejection("", "too_large", f"row group {group} inflates to {inflated} bytes (> {max_bytes}, the document size limit)")
            return
    if fields.text not in pf.schema_arrow.names:
        yield Rejection("", "malformed_record", f"no {fields.text!r} column (columns: {pf.schema_arrow.names})")
        return
    seen: set[str] = set()
    index = 0
    try:
        for batch in pf.iter_batches(batch_size=2048):
            for rec in batch.to_pylist():
                index += 1
                yield _record(path, index, rec, fields, seen)
    except Exception as exc:
        yield Rejection(f"L{index + 1}", "malformed_parquet", str(exc)[:500])
