"""Incremental sync proves its counts: each change embeds, upserts and deletes exactly what it must.

The expected figures come from an oracle independent of the pipeline's reuse logic: the source files
are parsed and chunked directly, and diffed against what the tables held before the change.
"""

import json
import os
import shutil
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.parsing import Document, parse_file
from rag_assets.tables import ALL_TABLES, CHUNKS, EMBEDDINGS, VECTOR_INDEX
from rag_assets_tests.conftest import make_env

TOPICS = ["glaciers", "orchards", "lighthouses", "typesetting", "beekeeping", "railways"]


def article(topic: str, n: int, sections: int = 3) -> str:
    """A Markdown document of a few sections, long enough for several 200-token chunks."""
    parts = [f"# {topic.title()} notes {n}"]
    for s in range(sections):
        parts.append(f"## Part {s} of {topic} {n}")
        parts.append(" ".join(
            f"Observation {s}.{i} about {topic} number {n}: the {topic} record {i} shows measurement {s * 31 + i * 7 + n}."
            for i in range(12)
        ))
    return "\n\n".join(parts) + "\n"


def write_docs(root: Path, shard: str, names: dict[str, str]) -> None:
    (root / shard).mkdir(parents=True, exist_ok=True)
    for name, text in names.items():
        (root / shard / name).write_text(text)


def source_chunks(env) -> dict[str, dict[str, str]]:
    """Oracle: shard -> {chunk_id: chunk_hash}, straight from the source files and the chunker."""
    from rag_assets.chunking import chunk_id_for

    chunker = env.resources()["model"].chunker()
    out: dict[str, dict[str, str]] = {}
    for shard_dir in sorted(p for p in env.source.iterdir() if p.is_dir()):
        chunks = out.setdefault(shard_dir.name, {})
        for path in sorted(shard_dir.rglob("*")):
            if path.is_file():
                for doc in parse_file(path.relative_to(env.source).as_posix(), path.read_bytes()):
                    assert isinstance(doc, Document)
                    for c in chunker.split(doc.text):
                        chunks[chunk_id_for(doc.doc_id, c.chunk_index)] = c.chunk_hash
    return out


def table_state(env) -> tuple[dict[str, dict[str, str]], set[str]]:
    """(shard -> {chunk_id: chunk_hash} in vector_index, every chunk_hash in embeddings)."""
    lake = env.resources()["iceberg"].lakehouse()
    index_rows = lake.table(VECTOR_INDEX).scan(selected_fields=("shard", "chunk_id", "chunk_hash")).to_arrow().to_pylist()
    state: dict[str, dict[str, str]] = {}
    for r in index_rows:
        state.setdefault(r["shard"], {})[r["chunk_id"]] = r["chunk_hash"]
    hashes = set(lake.table(EMBEDDINGS).scan(selected_fields=("chunk_hash",)).to_arrow()["chunk_hash"].to_pylist())
    return state, hashes


def expected_counts(before: dict[str, dict[str, str]], embedded_before: set[str], after: dict[str, dict[str, str]]):
    """shard -> (embedded, upserted, deleted) that a sync from `before` to `after` must report."""
    out = {}
    for shard in set(before) | set(after):
        old, new = before.get(shard, {}), after.get(shard, {})
        out[shard] = (
            len(set(new.values()) - embedded_before),
            sum(1 for cid, h in new.items() if old.get(cid) != h),
            len(set(old) - set(new)),
        )
    return out


def sync_json(*args: str) -> dict:
    result = CliRunner().invoke(main, ["sync", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def search_docs(query: str, k: int = 3) -> list[str]:
    result = CliRunner().invoke(main, ["search", query, "-k", str(k), "--json"])
    assert result.exit_code == 0, result.output
    return [h["doc_id"] for h in json.loads(result.stdout)["hits"]]


def assert_index_matches_source(env) -> None:
    """Tables and the live collection hold exactly the chunks the source gives, shard by shard."""
    want = source_chunks(env)
    state, _ = table_state(env)
    assert state == {s: c for s, c in want.items() if c}
    with env.resources()["qdrant"].index().session() as session:
        assert session.shard_counts() == {s: len(c) for s, c in want.items() if c}
    status = CliRunner().invoke(main, ["status", "--json"])
    rows = json.loads(status.stdout)["shards"]
    assert set(rows) == set(want) and all(r["in_sync"] for r in rows.values()), rows


def check_step(env, change, statuses: dict[str, str]) -> dict:
    """Apply `change` to the source, sync, and check every count against the oracle."""
    before, embedded_before = table_state(env)
    change()
    after = source_chunks(env)
    report = sync_json()
    assert {s: r["status"] for s, r in report["shards"].items()} == statuses
    for shard, (embedded, upserted, deleted) in expected_counts(before, embedded_before, after).items():
        row = report["shards"][shard]
        got = (row["embedded"], row["upserted"], row["deleted"])
        if statuses[shard] == "removed":
            assert row["deleted"] == deleted, (shard, row)
        else:
            assert got == (embedded, upserted, deleted), (shard, row)
            assert row["chunks"] == len(after[shard]), (shard, row)
            if statuses[shard] != "unchanged":  # an unchanged shard runs nothing: 0 embedded, 0 reused
                assert row["embedded"] + row["reused"] == row["chunks"], (shard, row)
    assert report["totals"]["failed"] == 0
    assert_index_matches_source(env)
    return report


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(tmp_path_factory.mktemp("incremental"), mp)
        for i, shard in enumerate(["north", "south", "east"]):
            write_docs(env.source, shard, {f"{t}.md": article(t, i) for t in TOPICS[i * 2 : i * 2 + 2]})
        report = sync_json()
        assert {r["status"] for r in report["shards"].values()} == {"new"}
        assert_index_matches_source(env)
        yield env


def latest_chunks_metadata(env, shard: str) -> dict:
    return env.instance().fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("chunks"), asset_partitions=[shard]), limit=1
    ).records[0].asset_materialization.metadata


def test_edit_one_document_runs_one_shard_and_embeds_only_changed_chunks(env):
    path = env.source / "north" / "glaciers.md"
    text = path.read_text()
    edited = text.replace("Part 2 of glaciers 0", "Part 2 of glaciers 0 (revised: moraines and crevasses)")

    report = check_step(env, lambda: path.write_text(edited), {"north": "changed", "south": "unchanged", "east": "unchanged"})
    row = report["shards"]["north"]
    assert 0 < row["embedded"] < row["chunks"]  # only the edited section's chunks went to the model
    assert search_docs("revised moraines and crevasses", 1) == ["north/glaciers.md"]
    # BM25 vectors: encoded for the split document's chunks only; the other documents' are copied.
    meta = latest_chunks_metadata(env, "north")
    split = env.resources()["iceberg"].lakehouse().read_partition(CHUNKS, "north", ("doc_id",))["doc_id"].to_pylist().count("north/glaciers.md")
    assert meta["documents_split"].value == 1 and meta["sparse_encoded"].value == split < row["chunks"]


def test_add_then_delete_a_document(env):
    path = env.source / "south" / "volcanoes.md"
    report = check_step(env, lambda: path.write_text(article("volcanoes", 9)), {"north": "unchanged", "south": "changed", "east": "unchanged"})
    assert report["shards"]["south"]["embedded"] == report["shards"]["south"]["upserted"] > 0
    assert search_docs("volcanoes number 9 measurement", 1) == ["south/volcanoes.md"]

    report = check_step(env, path.unlink, {"north": "unchanged", "south": "changed", "east": "unchanged"})
    assert report["shards"]["south"]["embedded"] == 0 and report["shards"]["south"]["deleted"] > 0
    assert "south/volcanoes.md" not in search_docs("volcanoes number 9 measurement", 5)


def test_touching_a_file_reads_it_again_but_embeds_and_upserts_nothing(env):
    path = env.source / "east" / "railways.md"
    stat = path.stat()
    report = check_step(
        env, lambda: os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000)),
        {"north": "unchanged", "south": "unchanged", "east": "changed"},
    )
    assert (report["shards"]["east"]["embedded"], report["shards"]["east"]["upserted"]) == (0, 0)
    meta = env.instance().fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("raw_documents"), asset_partitions=["east"]), limit=1
    ).records[0].asset_materialization.metadata
    assert meta["source_files_read"].value == 1  # only the touched file; the other is carried over unread
    chunk_meta = latest_chunks_metadata(env, "east")
    assert chunk_meta["documents_split"].value == 0  # same content hash: chunks carried over, not re-split
    assert chunk_meta["sparse_encoded"].value == 0  # with their BM25 vectors


def test_add_a_shard_then_remove_it(env):
    report = check_step(
        env, lambda: write_docs(env.source, "west", {"canals.md": article("canals", 4)}),
        {"north": "unchanged", "south": "unchanged", "east": "unchanged", "west": "new"},
    )
    assert report["shards"]["west"]["embedded"] > 0
    assert search_docs("canals number 4 measurement", 1) == ["west/canals.md"]

    report = check_step(
        env, lambda: shutil.rmtree(env.source / "west"),
        {"north": "unchanged", "south": "unchanged", "east": "unchanged", "west": "removed"},
    )
    lake = env.resources()["iceberg"].lakehouse()
    for spec in ALL_TABLES:
        assert lake.read_partition(spec, "west", ("shard",)).num_rows == 0, spec.name
    assert "west" not in env.instance().get_dynamic_partitions("shards")
    assert not any(d.startswith("west/") for d in search_docs("canals number 4 measurement", 5))


def test_reused_text_in_another_shard_is_not_embedded_again(env):
    # A copy of a document under a new name in another shard: same chunk texts, so same hashes.
    copy = (env.source / "north" / "orchards.md").read_text()
    report = check_step(
        env, lambda: (env.source / "east" / "orchards-copy.md").write_text(copy),
        {"north": "unchanged", "south": "unchanged", "east": "changed"},
    )
    row = report["shards"]["east"]
    assert row["embedded"] == 0 and row["upserted"] > 0  # new points, vectors reused from north
    # A third copy: its vectors come from the vector store, which holds each of them once.
    write_docs(env.source, "zeta", {"orchards-again.md": copy})
    zeta = sync_json()["shards"]["zeta"]
    assert zeta["status"] == "new" and zeta["embedded"] == 0 and zeta["upserted"] == row["upserted"]
    meta = env.instance().fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("embeddings"), asset_partitions=["zeta"]), limit=1
    ).records[0].asset_materialization.metadata
    assert meta["reused_from_store"].value == meta["chunks"].value > 0 and meta["store_files_read"].value >= 1
    lake = env.resources()["iceberg"].lakehouse()
    vectors = {s: {r["chunk_hash"]: r["vector"] for r in lake.read_partition(EMBEDDINGS, s, ("chunk_hash", "vector")).to_pylist()}
               for s in ("north", "zeta")}
    assert all(vectors["north"][h] == v for h, v in vectors["zeta"].items())  # the very same vectors
    (env.source / "east" / "orchards-copy.md").unlink()
    shutil.rmtree(env.source / "zeta")
    sync_json()


def test_reconcile_repairs_missing_stale_and_extra_points(env):
    from rag_assets.index import Point, point_id_for

    state, _ = table_state(env)
    north = sorted(state["north"])
    with env.resources()["qdrant"].index().session() as session:
        session.delete([point_id_for(cid) for cid in north[:3]])  # missing
        victim = point_id_for(north[3])
        vector = [1.0] + [0.0] * 383
        session.upsert([Point(victim, vector, {"shard": "north", "chunk_hash": "stale", "model": "x"})])  # stale
        session.upsert([Point(point_id_for("ghost-1"), vector, {"shard": "south", "chunk_hash": "g"}),  # extra
                        Point(point_id_for("ghost-2"), vector, {"shard": "gone", "chunk_hash": "g"})])  # extra, unknown shard

    def in_sync(*flags) -> dict[str, bool]:
        out = CliRunner().invoke(main, ["status", "--json", *flags])
        return {s: r["in_sync"] for s, r in json.loads(out.stdout)["shards"].items()}

    others = {s: True for s in state if s not in ("north", "south")}
    assert in_sync() == in_sync("--deep") == {"north": False, "south": False, **others}  # counts differ in both shards

    result = CliRunner().invoke(main, ["reconcile", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["shards"] == {
        "north": {"missing": 3, "stale": 1, "extra": 0, "pending": 0},
        "south": {"missing": 0, "stale": 0, "extra": 1, "pending": 0},
        "gone": {"missing": 0, "stale": 0, "extra": 1, "pending": 0},
    }
    assert report["totals"]["points"] == sum(len(c) for c in state.values())
    assert_index_matches_source(env)
    again = json.loads(CliRunner().invoke(main, ["reconcile", "--json"]).stdout)
    assert again["shards"] == {} and again["totals"]["missing"] == again["totals"]["extra"] == 0
    assert in_sync() == in_sync("--deep") == {"north": True, "south": True, **others}

    # A point rewritten by hand with another chunk hash: the counts agree, the deep comparison does not.
    with env.resources()["qdrant"].index().session() as session:
        session.upsert([Point(point_id_for(north[0]), vector, {"shard": "north", "chunk_hash": "stale", "model": "x"})])
    assert in_sync() == {"north": True, "south": True, **others}
    assert in_sync("--deep") == {"north": False, "south": True, **others}
    assert CliRunner().invoke(main, ["reconcile", "--json"]).exit_code == 0  # the later tests share this index
    assert_index_matches_source(env)


def test_reconcile_schedule_is_defined_and_runs_the_reconcile_job(env):
    from rag_assets.definitions import defs

    schedule = defs().resolve_schedule_def("reconcile_schedule")
    assert schedule.job_name == "reconcile_job" and schedule.cron_schedule == "0 3 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def renamed_model_copy(tmp: Path, name: str) -> Path:
    """The packaged model under another identity (its card names another repo): same weights, other key."""
    from rag_assets.config import default_model

    src = Path(default_model())
    dst = tmp / name
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "README.md":
            (dst / f.name).symlink_to(f)
    (dst / "README.md").write_text(f"# sentence-transformers/{name}\n")
    return dst


def test_a_chunker_change_is_a_migration_after_which_syncs_cost_no_model_call(env, monkeypatch):
    before, _ = table_state(env)
    monkeypatch.setenv("RAG_CHUNK_TOKENS", "80")
    after = source_chunks(env)  # the oracle under the new chunker
    # Configured before it is migrated: refused before anything runs, saying what to do.
    refused = CliRunner().invoke(main, ["sync", "--json"])
    assert refused.exit_code == 1 and "rag-assets migrate" in refused.output and "RAG_CHUNK_TOKENS=200" in refused.output
    monkeypatch.delenv("RAG_CHUNK_TOKENS")

    result = CliRunner().invoke(main, ["migrate", "--chunk-tokens", "80", "--json"])
    assert result.exit_code == 0, result.output
    migrated = json.loads(result.stdout)
    assert migrated["switched"] and migrated["settings"]["RAG_CHUNK_TOKENS"] == "80"
    for shard, row in migrated["shards"].items():
        assert row["rechunked"] and row["points"] == len(after[shard]) > len(before[shard])
        assert row["embedded"] == len(set(after[shard].values()) - set(before[shard].values()))  # new chunks only
    assert search_docs("revised moraines and crevasses", 1) == ["north/glaciers.md"]  # the alias serves it at once

    monkeypatch.setenv("RAG_CHUNK_TOKENS", "80")  # the configuration follows the switch
    report = sync_json()
    assert {r["status"] for r in report["shards"].values()} == {"changed"}
    for shard, row in report["shards"].items():  # rechunked as the migration did: every vector is in the store
        assert row["embedded"] == 0 and row["upserted"] == 0 and row["chunks"] == len(after[shard]), (shard, row)
    assert_index_matches_source(env)
    assert {r["status"] for r in sync_json()["shards"].values()} == {"unchanged"}
    assert json.loads(CliRunner().invoke(main, ["migrate", "--drop-old", "--json"]).stdout)["dropped"]


def test_model_change_needs_a_new_collection_and_then_re_embeds_everything(env, monkeypatch, tmp_path):
    from rag_assets.definitions import defs

    monkeypatch.setenv("RAG_CHUNK_TOKENS", "80")  # as the previous test left the index
    before, _ = table_state(env)
    monkeypatch.setenv("RAG_EMBED_MODEL", str(renamed_model_copy(tmp_path, "rag-test-minilm")))
    # Same alias, other model: refused before anything runs, by the CLI and by the sensor alike.
    result = CliRunner().invoke(main, ["sync", "--json"])
    assert result.exit_code != 0 and "rag-assets migrate" in result.output and "RAG_QDRANT_COLLECTION" in result.output
    tick = defs().resolve_sensor_def("source_change_sensor")(dg.build_sensor_context(instance=env.instance(), resources=env.resources()))
    assert isinstance(tick, dg.SkipReason) and "full re-embed" in tick.skip_message

    monkeypatch.setenv("RAG_QDRANT_COLLECTION", "rag_chunks_v2")
    report = sync_json()
    assert {r["status"] for r in report["shards"].values()} == {"changed"}
    for shard, row in report["shards"].items():
        assert row["embedded"] == len(set(before[shard].values())) and row["upserted"] == row["chunks"]
    model_key = env.resources()["model"].info().key
    assert model_key.startswith("sentence-transformers/rag-test-minilm@")
    with env.resources()["qdrant"].index().session() as session:
        assert session.count(other_model=model_key) == 0 and session.count() == sum(len(c) for c in before.values())
    assert search_docs("revised moraines and crevasses", 1) == ["north/glaciers.md"]


def test_onnx_backend_is_another_model_identity_that_keeps_every_chunk(env, monkeypatch, tmp_path):
    """RAG_EMBED_BACKEND=onnx: a model change (new collection, every vector embedded again under the
    `+onnx` key) whose chunks are the model's on torch (same tokenizer, same hashes); search finds the
    same text. (The previous test left the tables chunked by another model name, so they are re-chunked.)"""
    monkeypatch.setenv("RAG_CHUNK_TOKENS", "80")  # as the previous tests left the tables
    lake = env.resources()["iceberg"].lakehouse()

    def chunk_hashes() -> list[str]:
        return sorted(lake.table(CHUNKS).scan(selected_fields=("chunk_hash",)).to_arrow()["chunk_hash"].to_pylist())

    torch_chunks = sorted(h for chunks in source_chunks(env).values() for h in chunks.values())  # the model on torch
    monkeypatch.setenv("RAG_EMBED_BACKEND", "onnx")
    monkeypatch.setenv("RAG_MODEL_CACHE", str(tmp_path / "models"))
    monkeypatch.setenv("RAG_QDRANT_COLLECTION", "rag_chunks_onnx")
    report = sync_json()
    assert {r["status"] for r in report["shards"].values()} == {"changed"}
    assert chunk_hashes() == torch_chunks  # the same tokenizer: the same chunks as on torch
    model_key = env.resources()["model"].info().key
    assert model_key.endswith("+onnx")
    for shard, row in report["shards"].items():
        assert row["embedded"] == len(set(source_chunks(env)[shard].values())) and row["upserted"] == row["chunks"]
    with env.resources()["qdrant"].index().session() as session:
        assert session.count(other_model=model_key) == 0 and session.count() == len(torch_chunks)
    assert search_docs("revised moraines and crevasses", 1) == ["north/glaciers.md"]
    assert {r["status"] for r in sync_json()["shards"].values()} == {"unchanged"}
