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
from rag_assets.tables import QUARANTINE, RAW_DOCUMENTS
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
