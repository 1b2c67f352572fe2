"""End to end through Dagster's own APIs: real instance, Iceberg tables, embedded Qdrant, real model."""

import json
import shutil

import dagster as dg
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from rag_assets.defs.assets import SHARD_ASSETS
from rag_assets.defs.partitions import shards
from rag_assets.cli import main
from rag_assets.sync import run_sync
from rag_assets.tables import ALL_TABLES, CHUNKS, EMBEDDINGS, QUARANTINE, RAW_DOCUMENTS, VECTOR_INDEX
from rag_assets_tests.conftest import make_env, write_bad_inputs, write_corpus


@pytest.fixture(scope="module")
def synced(tmp_path_factory):
    """Three shards (plus bad inputs in alpha) synced once; shared by the read-only tests below."""
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(tmp_path_factory.mktemp("pipeline"), mp)
        write_corpus(env.source)
        expected_bad = write_bad_inputs(env.source / "alpha" / "bad")
        report = run_sync(env.instance(), env.resources()).as_json()
        yield env, report, expected_bad


def table(env, spec):
    return pl.from_arrow(env.resources()["iceberg"].lakehouse().table(spec).scan().to_arrow())


def search(env, query, shard=None):
    result = CliRunner().invoke(main, ["search", query, "-k", "1", "--json"] + (["--shard", shard] if shard else []))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)["hits"]


def test_sync_report_counts_every_shard(synced):
    env, report, expected_bad = synced
    assert set(report["shards"]) == {"alpha", "beta", "gamma"}
    rows = report["shards"]
    assert {s: r["status"] for s, r in rows.items()} == {"alpha": "new", "beta": "new", "gamma": "new"}
    # alpha: volcano, bread, chess + the one good record of bad/broken.jsonl
    assert [rows[s]["documents"] for s in ("alpha", "beta", "gamma")] == [4, 3, 3]
    assert rows["alpha"]["quarantined"] == len(expected_bad)
    for row in rows.values():
        assert row["embedded"] + row["reused"] == row["chunks"] == row["upserted"] > 0
    assert report["totals"]["failed"] == 0
    assert env.instance().get_dynamic_partitions(shards.name) == ["alpha", "beta", "gamma"]


def test_tables_read_back_with_polars(synced):
    env, report, _ = synced
    docs, chunks, emb, index = (table(env, s) for s in (RAW_DOCUMENTS, CHUNKS, EMBEDDINGS, VECTOR_INDEX))
    assert docs.group_by("shard").len().sort("shard")["len"].to_list() == [4, 3, 3]
    assert docs["doc_id"].n_unique() == docs.height
    assert docs.filter(pl.col("doc_id") == "beta/records.jsonl#q2")["metadata"].to_list() == ['{"lang": "en"}']
    chess = docs.filter(pl.col("doc_id") == "alpha/page.html").row(0, named=True)
    assert chess["title"] == "Chess openings" and "tracking" not in chess["text"]
    assert chunks.height == emb.height == index.height == sum(r["chunks"] for r in report["shards"].values())
    assert chunks["chunk_id"].n_unique() == chunks.height
    vectors = np.stack(emb["vector"].to_list())
    assert vectors.shape[1] == 384 and set(emb["dim"].to_list()) == {384}
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert emb["model"].unique().to_list() == [env.resources()["model"].info().key]
    # Every table is partitioned by shard, identity transform.
    lake = env.resources()["iceberg"].lakehouse()
    for spec in ALL_TABLES:
        fields = lake.table(spec).spec().fields
        assert [(f.name, str(f.transform)) for f in fields] == [("shard", "identity")]


def test_bad_inputs_are_quarantined_with_reasons(synced):
    env, _, expected_bad = synced
    q = table(env, QUARANTINE)
    got = {row["source_uri"].rsplit("/", 1)[-1]: row["reason"] for row in q.iter_rows(named=True)}
    assert got == expected_bad
    assert (q["shard"] == "alpha").all()


def test_search_finds_the_right_document(synced):
    env, _, _ = synced
    assert search(env, "what makes dough rise when baking?")[0]["doc_id"] == "alpha/bread.txt"
    assert search(env, "why does the ocean have tides")[0]["doc_id"] == "beta/records.jsonl#q2"
    assert search(env, "insects communicating about flowers")[0]["doc_id"] == "gamma/table.parquet#p1"
    assert search(env, "comet tail")[0]["doc_id"] == "gamma/notes.md.gz"
    assert search(env, "comet tail", shard="beta")[0]["shard"] == "beta"


def test_status_reports_every_shard_in_sync(synced):
    result = CliRunner().invoke(main, ["status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)["shards"]
    assert set(status) == {"alpha", "beta", "gamma"}
    assert all(row["in_sync"] and row["points"] == row["chunks"] > 0 for row in status.values())


def test_rerunning_a_partition_is_idempotent_and_checks_pass(synced):
    env, _, _ = synced
    lake = env.resources()["iceberg"].lakehouse()
    before = {s.name: lake.normalize(s, lake.read_partition(s, "beta")) for s in ALL_TABLES}
    snapshots = {s.name: lake.table(s).current_snapshot().snapshot_id for s in ALL_TABLES}
    result = dg.materialize(SHARD_ASSETS, partition_key="beta", instance=env.instance(), resources=env.resources())
    assert result.success
    evaluations = result.get_asset_check_evaluations()
    assert {c.check_name: c.passed for c in evaluations} == {"all_chunks_embedded": True, "index_matches_table": True}
    # Recorded against the shard, targeting this run's materialization of it, and saying which shard.
    assert {c.partition for c in evaluations} == {"beta"}
    assert {c.target_materialization_data.run_id for c in evaluations} == {result.run_id}
    assert all(c.description.startswith("shard 'beta': ") and c.metadata["shard"].value == "beta" for c in evaluations)
    meta = {e.asset_key.path[-1]: e.materialization.metadata for e in result.get_asset_materialization_events()}
    assert meta["embeddings"]["embedded"].value == 0
    assert meta["vector_index"]["upserted"].value == 0 and meta["vector_index"]["deleted"].value == 0
    for spec in ALL_TABLES:
        assert lake.normalize(spec, lake.read_partition(spec, "beta")).equals(before[spec.name]), spec.name
        assert lake.table(spec).current_snapshot().snapshot_id == snapshots[spec.name], "identical rows commit nothing"
    assert "dagster/column_schema" in meta["chunks"] and meta["raw_documents"]["dagster/table_name"].value == "rag.raw_documents"


def test_edit_add_and_remove_flow_through(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch)
    write_corpus(env.source)
    instance, resources = env.instance(), env.resources()
    run_sync(instance, resources)
    (env.source / "beta" / "guide.rst").write_text("Knitting\n========\n\nCables cross stitches to make a braided rope pattern.\n")
    shutil.rmtree(env.source / "gamma")
    report = run_sync(instance, resources).as_json()["shards"]
    assert {s: r["status"] for s, r in report.items()} == {"alpha": "unchanged", "beta": "changed", "gamma": "removed"}
    # Same chunk id, new hash: the same point is overwritten in place (nothing to delete).
    assert report["beta"]["embedded"] == 1 and report["beta"]["upserted"] == 1 and report["beta"]["deleted"] == 0
    assert report["alpha"]["embedded"] == 0 and report["alpha"]["documents"] == 3
    assert report["gamma"]["deleted"] == 3
    assert instance.get_dynamic_partitions(shards.name) == ["alpha", "beta"]
    # Runs of the project's jobs in its code location (the UI lists them under the job), tagged like the sensor's.
    runs = instance.get_runs()
    assert sorted(r.job_name for r in runs) == ["remove_shard_job"] + ["shard_sync_job"] * 4
    assert {r.remote_job_origin.repository_origin.get_label() for r in runs} == {"__repository__@rag_assets"}
    assert {(r.tags["rag/sync"], r.tags["rag/shard"]) for r in runs if r.job_name == "remove_shard_job"} == {("cli", "gamma")}
    assert search(env, "braided rope pattern")[0]["doc_id"] == "beta/guide.rst"
    lake = resources["iceberg"].lakehouse()
    for spec in ALL_TABLES:
        assert lake.read_partition(spec, "gamma").num_rows == 0
    with resources["qdrant"].index().session() as session:
        assert session.count("gamma") == 0
        assert session.count() == table(env, VECTOR_INDEX).height
