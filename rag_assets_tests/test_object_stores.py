"""Google Cloud Storage and Azure Blob Storage (ADLS Gen2 paths) as the document source and as the Iceberg
warehouse, against emulators on loopback started by the tests (gcp-storage-emulator from PyPI, Azurite from
npm via `make install`): the same checks as test_s3.py, once per store."""

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.source import ObjectStoreSource, SourceFile, open_source
from rag_assets.sync import run_sync
from rag_assets.tables import ALL_TABLES, QUARANTINE, RAW_DOCUMENTS
from rag_assets_tests.conftest import make_env, upload_folder, write_bad_inputs, write_corpus


@dataclass
class Store:
    scheme: str  # of the source
    warehouse: str
    version_field: str  # the object metadata the source takes as a file's version
    fs: object  # gcsfs / adlfs, for the test's own writes
    env: dict  # the warehouse's catalog properties


@pytest.fixture(params=["gs", "az"])
def store(request) -> Store:
    if request.param == "gs":
        fs, url = request.getfixturevalue("gcs")
        return Store("gs", "gs://lake/warehouse", "generation", fs,
                     {"RAG_ICEBERG_GCS__SERVICE__HOST": url, "RAG_ICEBERG_GCS__PROJECT_ID": "test"})
    fs, connection = request.getfixturevalue("azure")
    # The connection string is a secret catalog property: read where the catalog opens, never in Dagster's config.
    return Store("az", "abfs://lake/warehouse", "etag", fs, {"RAG_ICEBERG_ADLS__CONNECTION_STRING": connection})


def test_listing_uses_the_stores_versions_and_guards_reads(store, tmp_path):
    fs = store.fs
    write_corpus(tmp_path / "corpus")
    upload_folder(fs, tmp_path / "corpus", "docs/corpus")
    fs.pipe_file("docs/corpus/README.txt", b"directly under the prefix: in no shard")
    fs.pipe_file("docs/corpus/alpha/.hidden/x.md", b"# hidden")
    if store.scheme == "gs":  # (adlfs lists a flat container's "folder/" marker as an empty file: see README)
        fs.pipe_file("docs/corpus/alpha/folder/", b"")
    fs.pipe_file("docs/corpus/.staging/x.md", b"# a hidden top-level prefix")
    fs.pipe_file("docs/elsewhere/alpha/a.md", b"# outside the prefix")
    for i in range(120):
        fs.pipe_file(f"docs/corpus/many/f{i:04d}.txt", f"note {i}".encode())

    source = open_source(f"{store.scheme}://docs/corpus/")
    assert isinstance(source, ObjectStoreSource)
    shards = source.list_shards()
    assert set(shards) == {"alpha", "beta", "gamma", "many"} and set(source.skipped) == {".staging"}
    assert source.shard_names() == sorted(shards)
    assert [f.path for f in shards["alpha"].files] == ["alpha/bread.txt", "alpha/page.html", "alpha/volcano.md"]
    assert len(shards["many"].files) == 120
    body = (tmp_path / "corpus/alpha/bread.txt").read_bytes()
    bread = shards["alpha"].files[0]
    assert bread.size == len(body) and bread.version == str(fs.info("docs/corpus/alpha/bread.txt")[store.version_field]).strip('"')
    assert source.uri(bread.path) == f"{store.scheme}://docs/corpus/alpha/bread.txt"
    assert source.read_bytes(bread) == body
    assert source.has_shard("beta") and not source.has_shard("nope")
    if store.scheme == "az":
        assert open_source("abfs://docs/corpus").list_shards()["alpha"].fingerprint == shards["alpha"].fingerprint

    # Every write is a new version: the shard changes; the others keep their fingerprints.
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


def test_sync_reads_from_the_store_and_writes_iceberg_to_it(store, tmp_path, monkeypatch):
    fs = store.fs
    env = make_env(tmp_path, monkeypatch, RAG_SOURCE=f"{store.scheme}://docs/corpus", RAG_ICEBERG_WAREHOUSE=store.warehouse, **store.env)
    write_corpus(tmp_path / "corpus")
    bad = write_bad_inputs(tmp_path / "corpus" / "gamma" / "bad")
    upload_folder(fs, tmp_path / "corpus", "docs/corpus")

    report = run_sync(env.instance(), env.resources()).as_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == {"alpha": "new", "beta": "new", "gamma": "new"}
    assert report["totals"]["failed"] == 0 and report["totals"]["quarantined"] == len(bad)

    # Every table's data and metadata live in the store's warehouse; nothing in a local one.
    lake = env.resources()["iceberg"].lakehouse()
    assert type(lake.table(RAW_DOCUMENTS).io).__name__ == "FsspecFileIO"  # gcsfs / adlfs, chosen for the warehouse
    fs.invalidate_cache()
    written = fs.find("lake/warehouse")
    for spec in ALL_TABLES:
        assert lake.table(spec).metadata_location.startswith(f"{store.warehouse}/")
        assert any(k.endswith(".parquet") and f"/{spec.name}/data/" in k for k in written), spec.name
    assert not list(Path(env.home).rglob("*.parquet"))
    uris = set(lake.read_partition(RAW_DOCUMENTS, "alpha")["source_uri"].to_pylist())
    assert uris == {f"{store.scheme}://docs/corpus/alpha/{name}" for name in ("bread.txt", "page.html", "volcano.md")}
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
