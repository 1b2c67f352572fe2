"""Bad input as users produce it: every case ends as a quarantine row with its reason or a clear error,
and the rest of the shard (and every other shard) still lands."""

import json
import os

import dagster as dg
from click.testing import CliRunner

from rag_assets.defs.assets import SHARD_ASSETS
from rag_assets.cli import main
from rag_assets.source import LocalSource
from rag_assets.sync import run_sync
from rag_assets.tables import CHUNKS, QUARANTINE, RAW_DOCUMENTS
from rag_assets_tests.conftest import make_env, write_bad_inputs

SPACED, UNICODE = "bad things", "données 日本語 ✓"


def quarantine(lake, shard: str) -> dict[str, str]:
    return {r["source_uri"].rsplit("/", 1)[1]: r["reason"] for r in lake.read_partition(QUARANTINE, shard).to_pylist()}


def test_bad_files_odd_shard_names_and_an_empty_shard(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch)
    bad = write_bad_inputs(env.source / SPACED)
    (env.source / SPACED / "kites.md").write_text("# Kites\n\nA kite needs steady wind and a long line to climb.\n")
    with open(env.source / SPACED / "huge.md", "wb") as f:  # 200 MB (sparse: costs no disk), never read
        f.truncate(200 * 1024 * 1024)
    (tmp_path / "outside.md").write_text("# Private\n\nThis file lies outside the source root.\n")
    (env.source / SPACED / "escape.md").symlink_to(tmp_path / "outside.md")
    (env.source / UNICODE).mkdir()
    (env.source / UNICODE / "café.md").write_text("# Café\n\nUn café crème se boit le matin à Paris.\n", encoding="utf-8")
    (env.source / "empty").mkdir()

    report = run_sync(env.instance(), env.resources()).as_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == {SPACED: "new", UNICODE: "new", "empty": "new"}
    assert report["totals"]["failed"] == 0

    lake = env.resources()["iceberg"].lakehouse()
    assert quarantine(lake, SPACED) == {**bad, "huge.md": "too_large", "escape.md": "unreadable"}
    detail = {r["source_uri"].rsplit("/", 1)[1]: r["detail"] for r in lake.read_partition(QUARANTINE, SPACED).to_pylist()}
    assert detail["escape.md"] == "symlink points outside the source root"
    assert detail["huge.md"] == "209715200 bytes > 64 MiB limit"
    docs = sorted(lake.read_partition(RAW_DOCUMENTS, SPACED)["doc_id"].to_pylist())
    assert docs == [f"{SPACED}/broken.jsonl#ok", f"{SPACED}/kites.md"]  # the good line of the broken JSONL too
    assert "outside the source root" not in json.dumps(lake.read_partition(RAW_DOCUMENTS, SPACED).to_pylist(), default=str)
    assert lake.read_partition(RAW_DOCUMENTS, UNICODE)["doc_id"].to_pylist() == [f"{UNICODE}/café.md"]
    assert report["shards"]["empty"]["documents"] == 0

    search = json.loads(CliRunner().invoke(main, ["search", "café crème le matin", "-k", "1", "--json"]).stdout)["hits"]
    assert (search[0]["shard"], search[0]["doc_id"]) == (UNICODE, f"{UNICODE}/café.md")
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)["shards"]
    assert set(status) == {SPACED, UNICODE, "empty"} and all(row["in_sync"] for row in status.values())
    assert (status[SPACED]["points"], status["empty"]["points"]) == (status[SPACED]["chunks"], 0)


def test_a_file_that_vanishes_between_listing_and_reading_is_quarantined(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch)
    shard = env.source / "s"
    shard.mkdir()
    (shard / "stays.md").write_text("# Stays\n\nLighthouses guide ships past the rocks at night.\n")
    (shard / "goes.md").write_text("# Goes\n\nThis file is deleted after the listing.\n")
    list_shard = LocalSource.list_shard

    def list_then_delete(self, name):
        listing = list_shard(self, name)
        (shard / "goes.md").unlink()  # another process removes it before the asset reads it
        return listing

    monkeypatch.setattr(LocalSource, "list_shard", list_then_delete)
    instance = env.instance()
    instance.add_dynamic_partitions("shards", ["s"])
    result = dg.materialize(SHARD_ASSETS, partition_key="s", instance=instance, resources=env.resources())
    assert result.success
    lake = env.resources()["iceberg"].lakehouse()
    assert quarantine(lake, "s") == {"goes.md": "unreadable"}
    assert "FileNotFoundError" in lake.read_partition(QUARANTINE, "s")["detail"][0].as_py()
    assert lake.read_partition(RAW_DOCUMENTS, "s")["doc_id"].to_pylist() == ["s/stays.md"]
    assert os.path.exists(shard / "stays.md")


def write_hostile_inputs(folder) -> dict[str, str]:
    """Files a hostile user leaves in a shard (RAG_MAX_DOCUMENT_MB=4); returns name -> quarantine reason."""
    import gzip
    import io
    import stat

    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bomb.txt.gz").write_bytes(gzip.compress(b"\0" * (64 * 1024 * 1024), 9))  # 64 KB -> 64 MB
    (folder / "record.jsonl.gz").write_bytes(gzip.compress(b'{"_id": "r", "text": "' + b"a" * (16 * 1024 * 1024) + b'"}\n', 9))
    buffer = io.BytesIO()
    pq.write_table(pa.table({"_id": ["v"], "text": ["b" * (16 * 1024 * 1024)]}), buffer, compression="zstd")
    (folder / "value.parquet").write_bytes(buffer.getvalue())  # a few KB holding a 16 MB string
    os.mkfifo(folder / "pipe.md")
    (folder / "loop-a.md").symlink_to(folder / "loop-b.md")
    (folder / "loop-b.md").symlink_to(folder / "loop-a.md")
    with open(os.open(bytes(folder) + b"/caf\xe9.md", os.O_CREAT | os.O_WRONLY, 0o644), "w") as f:  # Latin-1 name
        f.write("# Latin-1 name\n\nThis name is not UTF-8.\n")
    deep = "[" * 100_000 + "]" * 100_000
    (folder / "deep.json").write_text(deep)
    (folder / "deep.jsonl").write_text('{"_id": "fine", "text": "Valid records around a deep one still land."}\n' + deep + "\n")
    reasons = {
        "bomb.txt.gz": "too_large", "record.jsonl.gz": "too_large", "value.parquet": "too_large",
        "pipe.md": "special_file", "loop-a.md": "unreadable", "loop-b.md": "unreadable",
        "caf%5Cxe9.md": "bad_name",  # (the URI of the printable name `caf\\xe9.md`)
        "deep.json": "malformed_json", "deep.jsonl": "malformed_json",
    }
    try:  # a character device (/dev/zero's numbers): needs CAP_MKNOD, which CI's root has
        os.mknod(folder / "zero.md", stat.S_IFCHR | 0o600, os.makedev(1, 5))
        reasons["zero.md"] = "special_file"
    except PermissionError:
        pass
    return reasons


def test_hostile_files_are_quarantined_and_never_stop_or_repeat_a_sync(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch, RAG_MAX_DOCUMENT_MB="4")
    reasons = write_hostile_inputs(env.source / "junk")
    (env.source / "junk" / "kites.md").write_text("# Kites\n\nA kite needs steady wind and a long line to climb.\n")
    (env.source / "junk" / "word.md").write_text("# One long word\n\n" + "w" * 200_000 + "\n")
    (env.source / "good").mkdir()
    (env.source / "good" / "bread.md").write_text("# Bread\n\nBread rises when yeast ferments the dough.\n")
    # Top-level names that cannot be shards: reported, never skipped in silence.
    (env.source / ".hidden").mkdir()
    (env.source / ".hidden" / "a.md").write_text("# Hidden\n\nNot a shard.\n")
    (env.source / "linked").symlink_to(env.source / "good")
    os.mkdir(bytes(env.source) + b"/latin\xe9")
    (env.source / ("n" * 250)).mkdir()

    report = run_sync(env.instance(), env.resources()).as_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == {"junk": "new", "good": "new"}
    assert report["totals"]["failed"] == 0
    assert set(report["skipped_shards"]) == {".hidden", "linked", "latin\\xe9", "n" * 250}
    assert "URL-quoted" in report["skipped_shards"]["n" * 250] and "UTF-8" in report["skipped_shards"]["latin\\xe9"]

    lake = env.resources()["iceberg"].lakehouse()
    rows = lake.read_partition(QUARANTINE, "junk").to_pylist()
    assert {r["source_uri"].rsplit("/", 1)[1]: r["reason"] for r in rows} == reasons
    detail = {r["source_uri"].rsplit("/", 1)[1]: r["detail"] for r in rows}
    assert "decompresses to more than" in detail["bomb.txt.gz"] and "inflates to" in detail["value.parquet"]
    assert detail["pipe.md"] == "not a regular file (a FIFO)" and "loop" in detail["loop-a.md"]
    docs = sorted(lake.read_partition(RAW_DOCUMENTS, "junk")["doc_id"].to_pylist())
    assert docs == ["junk/deep.jsonl#fine", "junk/kites.md", "junk/word.md"]  # the valid record of deep.jsonl too
    chunks = lake.read_partition(CHUNKS, "junk", ("doc_id", "text", "token_count")).to_pylist()
    word = [c for c in chunks if c["doc_id"] == "junk/word.md"]
    assert max(len(c["text"]) for c in word) <= env.resources()["model"].chunker().max_chunk_chars
    assert sum(len(c["text"]) for c in word) >= 200_000  # cut, not dropped

    # The quarantine is visible per shard in the UI: a sample of its rows, and every column described.
    meta = env.instance().fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_documents"), asset_partitions=["junk"]), limit=1
    ).records[0].asset_materialization.metadata
    assert "| source | record | reason | detail |" in meta["quarantine_sample"].value and "special_file" in meta["quarantine_sample"].value
    assert all(c.description for c in meta["dagster/column_schema"].schema.columns)
    status = json.loads(CliRunner().invoke(main, ["status", "--json"]).stdout)
    assert status["skipped_shards"] == report["skipped_shards"] and set(status["shards"]) == {"junk", "good"}
    again = run_sync(env.instance(), env.resources()).as_json()  # nothing fails again, nothing re-runs
    assert {s: r["status"] for s, r in again["shards"].items()} == {"junk": "unchanged", "good": "unchanged"}


def test_the_error_of_a_failed_shard_is_its_real_cause(tmp_path, monkeypatch):
    from rag_assets.steps import documents

    env = make_env(tmp_path, monkeypatch)
    for shard in ("ok", "broken"):
        (env.source / shard).mkdir()
        (env.source / shard / "a.md").write_text(f"# {shard}\n\nSome text about {shard} shards.\n")
    plan_reads = documents.plan_reads

    def failing(src, listing, previous, limit):
        if listing.shard == "broken":
            raise PermissionError(13, "Permission denied", "broken/a.md")
        return plan_reads(src, listing, previous, limit)

    monkeypatch.setattr(documents, "plan_reads", failing)
    report = run_sync(env.instance(), env.resources()).as_json()
    assert report["shards"]["ok"]["status"] == "new" and report["shards"]["broken"]["status"] == "failed"
    assert report["shards"]["broken"]["error"] == "PermissionError: [Errno 13] Permission denied: 'broken/a.md'"
    # The Dagster step failure (what the UI shows first) leads with the same cause.
    run = env.instance().get_runs(dg.RunsFilter(tags={"dagster/partition": "broken"}))[0]
    (failure,) = [e for e in env.instance().all_logs(run.run_id) if e.dagster_event and e.dagster_event.is_step_failure]
    message = failure.dagster_event.step_failure_data.error.message
    assert message.startswith("dagster._core.definitions.events.Failure: PermissionError: [Errno 13] Permission denied"), message


def test_search_arguments_are_checked(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch)
    (env.source / "s").mkdir()
    (env.source / "s" / "a.md").write_text("# Owls\n\nOwls hunt at night and see well in the dark.\n")
    assert run_sync(env.instance(), env.resources()).as_json()["totals"]["failed"] == 0
    for args, message in ((["owls", "-k", "-5"], "-5 is not in the range 1<=x<=1000"), (["  "], "the query is empty"),
                          (["owls", "--shard", "nope"], "no shard 'nope' in the collection")):
        out = CliRunner().invoke(main, ["search", *args])
        assert out.exit_code == 2 and message in out.output and "Traceback" not in out.output, out.output
    assert CliRunner().invoke(main, ["search", "owls", "--shard", "s", "-k", "1"]).exit_code == 0
