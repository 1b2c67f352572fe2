"""S3 as the document source and as the Iceberg warehouse, against moto's S3 server on loopback."""

import hashlib
import json
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.source import S3Source, SourceFile, open_source
from rag_assets.sync import run_sync
from rag_assets.tables import ALL_TABLES, QUARANTINE, RAW_DOCUMENTS
from rag_assets_tests.conftest import make_env, write_bad_inputs, write_corpus


def upload_folder(s3, folder: Path, bucket: str, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())


def keys(s3, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


@pytest.fixture
def s3(moto_server):
    client = boto3.client("s3")
    for bucket in ("docs", "lake"):
        client.create_bucket(Bucket=bucket)
    return client


def test_listing_uses_etags_and_only_a_rewritten_object_changes_its_shard(s3, tmp_path):
    write_corpus(tmp_path / "corpus")
    upload_folder(s3, tmp_path / "corpus", "docs", "corpus")
    s3.put_object(Bucket="docs", Key="corpus/README.txt", Body=b"directly under the prefix: in no shard")
    s3.put_object(Bucket="docs", Key="corpus/alpha/.hidden/x.md", Body=b"# hidden")
    s3.put_object(Bucket="docs", Key="corpus/alpha/folder/", Body=b"")  # a console-made "folder" marker
    s3.put_object(Bucket="docs", Key="elsewhere/alpha/a.md", Body=b"# outside the prefix")

    # 1,100 objects in one shard: the listing must follow ListObjectsV2's pages (1,000 keys each).
    for i in range(1100):
        s3.put_object(Bucket="docs", Key=f"corpus/many/f{i:04d}.txt", Body=f"note {i}".encode())

    s3.put_object(Bucket="docs", Key="corpus/.staging/x.md", Body=b"# a hidden top-level prefix")
    s3.put_object(Bucket="docs", Key=f"corpus/{'n' * 250}/x.md", Body=b"# a prefix too long for a partition folder")

    source = open_source("s3://docs/corpus/")
    assert isinstance(source, S3Source)
    shards = source.list_shards()
    assert set(shards) == {"alpha", "beta", "gamma", "many"}
    assert set(source.skipped) == {".staging", "n" * 250}  # reported, not skipped in silence
    assert source.shard_names() == sorted(shards) and set(source.skipped) == {".staging", "n" * 250}  # (the delimiter listing)
    assert [f.path for f in shards["alpha"].files] == ["alpha/bread.txt", "alpha/page.html", "alpha/volcano.md"]
    assert len(shards["many"].files) == 1100
    body = (tmp_path / "corpus/alpha/bread.txt").read_bytes()
    bread = shards["alpha"].files[0]
    assert (bread.size, bread.version) == (len(body), hashlib.md5(body).hexdigest())  # ETag of a single-part upload
    assert source.uri(bread.path) == "s3://docs/corpus/alpha/bread.txt"
    assert source.read_bytes(bread) == body
    assert source.list_shard("alpha").fingerprint == shards["alpha"].fingerprint
    assert source.has_shard("beta") and not source.has_shard("nope")

    # The same bytes written again keep the ETag, so nothing changes; other bytes change one shard.
    s3.put_object(Bucket="docs", Key="corpus/alpha/bread.txt", Body=body)
    assert open_source("s3://docs/corpus").list_shards()["alpha"].fingerprint == shards["alpha"].fingerprint
    s3.put_object(Bucket="docs", Key="corpus/alpha/bread.txt", Body=body + b"\nSourdough uses wild yeast.\n")
    after = source.list_shards()
    assert after["alpha"].fingerprint != shards["alpha"].fingerprint
    assert all(after[s].fingerprint == shards[s].fingerprint for s in ("beta", "gamma", "many"))

    # An object rewritten or deleted since it was listed is an OSError naming it, never stale bytes.
    with pytest.raises(OSError, match="changed since listing"):
        source.read_bytes(bread)
    s3.delete_object(Bucket="docs", Key="corpus/beta/guide.rst")
    with pytest.raises(FileNotFoundError, match="vanished"):
        source.read_bytes(SourceFile("beta/guide.rst", 1, "x"))
    read = dict(source.read_many(after["many"].files[:40] + [SourceFile("beta/guide.rst", 1, "x")]))
    assert [f.path for f in read][:3] == ["many/f0000.txt", "many/f0001.txt", "many/f0002.txt"]  # in order
    assert read[after["many"].files[7]] == b"note 7"
    assert isinstance(read[SourceFile("beta/guide.rst", 1, "x")], FileNotFoundError)


# The catalog by configuration alone: the SQL catalog (SQLite here, PostgreSQL in test_postgres.py) and
# AWS Glue (moto's Glue API). moto ignores Glue's VersionId, so the optimistic locking that makes
# concurrent commits safe on real Glue cannot be exercised here; the sync commits one shard at a time.
CATALOGS = {
    "sql": {},
    "glue": {"RAG_ICEBERG_TYPE": "glue", "RAG_ICEBERG_GLUE__ENDPOINT": "{endpoint}", "RAG_ICEBERG_GLUE__REGION": "us-east-1"},
}


@pytest.mark.parametrize("catalog", CATALOGS)
def test_sync_reads_from_s3_and_writes_iceberg_to_s3(catalog, s3, moto_server, tmp_path, monkeypatch):
    env = make_env(
        tmp_path, monkeypatch,
        RAG_SOURCE="s3://docs/corpus",
        RAG_ICEBERG_WAREHOUSE="s3://lake/warehouse",
        RAG_ICEBERG_S3__ENDPOINT=moto_server,
        RAG_ICEBERG_S3__REGION="us-east-1",
        **{k: v.format(endpoint=moto_server) for k, v in CATALOGS[catalog].items()},
    )
    write_corpus(tmp_path / "corpus")
    bad = write_bad_inputs(tmp_path / "corpus" / "gamma" / "bad")
    upload_folder(s3, tmp_path / "corpus", "docs", "corpus")

    report = run_sync(env.instance(), env.resources()).as_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == {"alpha": "new", "beta": "new", "gamma": "new"}
    assert report["totals"]["failed"] == 0
    assert report["totals"]["quarantined"] == len(bad)

    # Every table's data and metadata live in the S3 warehouse; nothing was written to a local one.
    lake = env.resources()["iceberg"].lakehouse()
    written = keys(s3, "lake", "warehouse/")
    for spec in ALL_TABLES:
        assert lake.table(spec).metadata_location.startswith("s3://lake/warehouse/")
        if catalog == "glue":
            glue_table = boto3.client("glue").get_table(DatabaseName="rag", Name=spec.name)["Table"]
            assert glue_table["Parameters"]["metadata_location"] == lake.table(spec).metadata_location
        assert any(k.endswith(".parquet") and f"/{spec.name}/data/" in k for k in written), spec.name
    assert not (env.home / "warehouse").exists() or not any((env.home / "warehouse").rglob("*.parquet"))
    uris = set(lake.read_partition(RAW_DOCUMENTS, "alpha")["source_uri"].to_pylist())
    assert uris == {"s3://docs/corpus/alpha/bread.txt", "s3://docs/corpus/alpha/page.html", "s3://docs/corpus/alpha/volcano.md"}
    reasons = {r["source_uri"].rsplit("/", 1)[1]: r["reason"] for r in lake.read_partition(QUARANTINE, "gamma").to_pylist()}
    assert reasons == bad

    hits = json.loads(CliRunner().invoke(main, ["search", "yeast makes the dough rise", "-k", "1", "--json"]).stdout)["hits"]
    assert hits[0]["doc_id"] == "alpha/bread.txt"

    # Rewrite one object: only its shard runs, and only the changed document's chunks are embedded.
    s3.put_object(Bucket="docs", Key="corpus/beta/guide.rst", Body=b"Knitting\n========\n\nCable stitches cross groups of loops over each other.\n")
    report = run_sync(env.instance(), env.resources()).as_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == {"alpha": "unchanged", "beta": "changed", "gamma": "unchanged"}
    assert report["shards"]["beta"]["embedded"] == 1
    hits = json.loads(CliRunner().invoke(main, ["search", "cable stitches cross loops", "-k", "1", "--json"]).stdout)["hits"]
    assert hits[0]["doc_id"] == "beta/guide.rst"

    # Delete a shard's objects: the shard, its rows and its points go.
    s3.delete_objects(Bucket="docs", Delete={"Objects": [{"Key": k} for k in keys(s3, "docs", "corpus/alpha/")]})
    report = run_sync(env.instance(), env.resources()).as_json()
    assert report["shards"]["alpha"]["status"] == "removed"
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)["shards"]
    assert set(status) == {"beta", "gamma"} and all(row["in_sync"] for row in status.values())
    lake = env.resources()["iceberg"].lakehouse()
    assert all(lake.read_partition(spec, "alpha").num_rows == 0 for spec in ALL_TABLES)
    with env.resources()["qdrant"].index().session() as session:
        assert session.count("alpha") == 0 and session.count("beta") > 0

