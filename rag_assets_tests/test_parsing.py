import gzip
import json

from rag_assets.parsing import Document, Rejection, parse_file
from rag_assets.source import LocalSource


def one(path, data):
    items = list(parse_file(path, data))
    assert len(items) == 1, items
    return items[0]


def test_markdown_title_hash_and_stable_id():
    doc = one("s/a.md", b"# Title here\r\n\r\nBody text.  \r\n")
    assert isinstance(doc, Document)
    assert (doc.doc_id, doc.title, doc.text) == ("s/a.md", "Title here", "# Title here\n\nBody text.")
    # Normalized content: CRLF vs LF and trailing spaces give the same hash.
    assert one("s/a.md", b"# Title here\n\nBody text.\n").content_hash == doc.content_hash
    assert one("s/a.md", b"# Title here\n\nBody text!\n").content_hash != doc.content_hash


def test_rst_title_and_gzip_variant():
    raw = "Knitting\n========\n\nPurl stitches.\n".encode()
    plain, packed = one("s/k.rst", raw), one("s/k.rst.gz", gzip.compress(raw))
    assert plain.title == packed.title == "Knitting"
    assert plain.content_hash == packed.content_hash


def test_html_drops_markup_scripts_and_keeps_structure():
    doc = one("s/p.html", b"<html><head><title>T</title><style>p{color:red}</style></head><body>"
                          b"<h2>Sec</h2><p>One <b>bold</b> word.</p><script>alert(1)</script><p>Two.</p></body></html>")
    assert doc.title == "T"
    assert "alert" not in doc.text and "color" not in doc.text and "<" not in doc.text
    assert "## Sec" in doc.text and "One bold word." in doc.text
    assert "One bold word.\n\nTwo." in doc.text


def test_jsonl_records_keep_going_past_a_broken_line():
    data = b'{"_id": "1", "title": "A", "text": "alpha", "lang": "en"}\nnot json\n{"_id": "2", "text": "beta"}\n'
    items = list(parse_file("s/r.jsonl", data))
    docs = [i for i in items if isinstance(i, Document)]
    bad = [i for i in items if isinstance(i, Rejection)]
    assert [d.doc_id for d in docs] == ["s/r.jsonl#1", "s/r.jsonl#2"]
    assert json.loads(docs[0].metadata) == {"lang": "en"}
    assert [(b.record, b.reason) for b in bad] == [("L2", "malformed_json")]


def test_json_shapes_duplicates_and_missing_text():
    items = list(parse_file("s/c.json", json.dumps({"data": [{"_id": "x", "text": "t"}, {"_id": "x", "text": "u"}, {"_id": "y"}]}).encode()))
    assert isinstance(items[0], Document) and items[0].doc_id == "s/c.json#x"
    assert (items[1].reason, items[2].reason) == ("duplicate_id", "malformed_record")


def test_bad_inputs_become_rejections_with_reasons():
    cases = {
        ("s/r.txt", bytes(range(256)) * 4): "binary",
        ("s/l.md", "café".encode("latin-1")): "invalid_utf8",
        ("s/e.txt", b"  \n"): "empty",
        ("s/b.json", b"{nope"): "malformed_json",
        ("s/z.md.gz", b"\x1f\x8bxx"): "corrupt_gzip",
        ("s/x.png", b"\x89PNG"): "unsupported_type",
        ("s/p.parquet", b"PAR1 not really"): "malformed_parquet",
        ("s/h.html", b"<html><body><script>x()</script></body></html>"): "empty",
    }
    for (path, data), reason in cases.items():
        item = one(path, data)
        assert isinstance(item, Rejection) and item.reason == reason, (path, item)


def test_listing_fingerprint_skips_hidden_and_rejects_outside_symlinks(tmp_path):
    root = tmp_path / "src"
    (root / "s1").mkdir(parents=True)
    (root / "s1" / "a.md").write_text("hello")
    (root / "s1" / ".hidden.md").write_text("ignored")
    (tmp_path / "secret.txt").write_text("outside")
    (root / "s1" / "link.txt").symlink_to(tmp_path / "secret.txt")
    src = LocalSource(root)
    listing = src.list_shards()["s1"]
    by_path = {f.path: f for f in listing.files}
    assert set(by_path) == {"s1/a.md", "s1/link.txt"}
    assert by_path["s1/link.txt"].rejected == "symlink points outside the source root"
    before = listing.fingerprint
    assert src.list_shard("s1").fingerprint == before
    (root / "s1" / "a.md").write_text("hello!")
    assert src.list_shard("s1").fingerprint != before
