"""Google Cloud Storage as the document source and as the Iceberg warehouse, against gcp-storage-emulator
(PyPI) on loopback, started by the test itself: the same checks as test_s3.py."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.source import ObjectStoreSource, SourceFile, open_source
from rag_assets.sync import run_sync
from rag_assets.tables import ALL_TABLES, QUARANTINE, RAW_DOCUMENTS
from rag_assets_tests.conftest import make_env, upload_folder, write_bad_inputs, write_corpus


def test_listing_uses_generations_and_guards_reads(gcs, tmp_path):
    fs, _ = gcs
    write_corpus(tmp_path / "corpus")
    upload_folder(fs, tmp_path / "corpus", "docs/corpus")
    fs.pipe_file("docs/corpus/README.txt", b"directly under the prefix: in no shard")
    fs.pipe_file("docs/corpus/alpha/.hidden/x.md", b"# hidden")
    fs.pipe_file("docs/corpus/alpha/folder/", b"")  # a console-made "folder" marker
    fs.pipe_file("docs/corpus/.staging/x.md", b"# a hidden top-level prefix")
    fs.pipe_file("docs/elsewhere/alpha/a.md", b"# outside the prefix")
    for i in range(120):
        fs.pipe_file(f"docs/corpus/many/f{i:04d}.txt", f"note {i}".encode())

    source = open_source("gs://docs/corpus/")
    assert isinstance(source, ObjectStoreSource)
    shards = source.list_shards()
    assert set(shards) == {"alpha", "beta", "gamma", "many"} and set(source.skipped) == {".staging"}
    assert source.shard_names() == sorted(shards)
    assert [f.path for f in shards["alpha"].files] == ["alpha/bread.txt", "alpha/page.html", "alpha/volcano.md"]
    assert len(shards["many"].files) == 120
    body = (tmp_path / "corpus/alpha/bread.txt").read_bytes()
    bread = shards["alpha"].files[0]
    assert bread.size == len(body) and bread.version == str(fs.info("docs/corpus/alpha/bread.txt")["generation"])
    assert source.uri(bread.path) == "gs://docs/corpus/alpha/bread.txt"
    assert source.read_bytes(bread) == body
    assert source.has_shard("beta") and not source.has_shard("nope")

    # Every write is a new generation: the shard changes; the others keep their fingerprints.
    fs.pipe_file("docs/corpus/alpha/bread.txt", body + b"\nSourdough uses wild yeast.\n")
    after = source.list_shards()
    assert after["alpha"].fingerprint != shards["alpha"].fingerprint
    assert all(after[s].fingerprint == shards[s].fingerprint for s in ("beta", "gamma", "many"))
    with pytest.raises(OSError, match="changed since listing"):  # never new bytes under the old version
        source.read_bytes(bread)
    fs.rm("docs/corpus/beta/guide.rst")
    with pytest.raises(FileNotFoundError, match="vanished"):
        source.read_bytes(SourceFile("beta/guide.rst", 1, "x"))
    read = dict(source.read_many(after["many"].files[:40]))  # 16 in flight
    assert [f.path for f in read][:2] == ["many/f0000.txt", "many/f0001.txt"] and read[after["many"].files[7]] == b"note 7"


def test_sync_reads_from_gcs_and_writes_iceberg_to_gcs(gcs, tmp_path, monkeypatch):
    fs, url = gcs
    env = make_env(
        tmp_path, monkeypatch,
        RAG_SOURCE="gs://docs/corpus",
        RAG_ICEBERG_WAREHOUSE="gs://lake/warehouse",
        RAG_ICEBERG_GCS__SERVICE__HOST=url, RAG_ICEBERG_GCS__PROJECT_ID="test",
    )
    write_corpus(tmp_path / "corpus")
    bad = write_bad_inputs(tmp_path / "corpus" / "gamma" / "bad")
    upload_folder(fs, tmp_path / "corpus", "docs/corpus")

    report = run_sync(env.instance(), env.resources()).as_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == {"alpha": "new", "beta": "new", "gamma": "new"}
    assert report["totals"]["failed"] == 0 and report["totals"]["quarantined"] == len(bad)

    # Every table's data and metadata live in the GCS warehouse; nothing in a local one.
    lake = env.resources()["iceberg"].lakehouse()
    assert type(lake.table(RAW_DOCUMENTS).io).__name__ == "FsspecFileIO"  # gcsfs, chosen for a gs:// warehouse
    fs.invalidate_cache()
    written = fs.find("lake/warehouse")
    for spec in ALL_TABLES:
        assert lake.table(spec).metadata_location.startswith("gs://lake/warehouse/")
        assert any(k.endswith(".parquet") and f"/{spec.name}/data/" in k for k in written), spec.name
    assert not any((env.home / "warehouse").rglob("*.parquet")) if (env.home / "warehouse").exists() else True
    uris = set(lake.read_partition(RAW_DOCUMENTS, "alpha")["source_uri"].to_pylist())
    assert uris == {"gs://docs/corpus/alpha/bread.txt", "gs://docs/corpus/alpha/page.html", "gs://docs/corpus/alpha/volcano.md"}
    reasons = {r["source_uri"].rsplit("/", 1)[1]: r["reason"] for r in lake.read_partition(QUARANTINE, "gamma").to_pylist()}
    assert reasons == bad
    hits = json.loads(CliRunner().invoke(main, ["search", "yeast makes the dough rise", "-k", "1", "--json"]).stdout)["hits"]
    assert hits[0]["doc_id"] == "alpha/bread.txt"

    # One rewritten object: only its shard runs, one chunk embedded.
    fs.pipe_file("docs/corpus/beta/guide.rst", b"Knitting\n========\n\nCable stitches cross groups of loops over each other.\n")
    report = run_sync(env.instance(), env.resources()).as_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == {"alpha": "unchanged", "beta": "changed", "gamma": "unchanged"}
    assert report["shards"]["beta"]["embedded"] == 1

    # A shard's objects deleted: the shard, its rows and its points go.
    fs.rm("docs/corpus/alpha", recursive=True)
    report = run_sync(env.instance(), env.resources()).as_json()
    assert report["shards"]["alpha"]["status"] == "removed"
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)["shards"]
    assert set(status) == {"beta", "gamma"} and all(row["in_sync"] for row in status.values())
    lake = env.resources()["iceberg"].lakehouse()
    assert all(lake.read_partition(spec, "alpha").num_rows == 0 for spec in ALL_TABLES)
