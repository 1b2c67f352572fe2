"""The deletion guard on a real sync: a source that lost most of a shard, or most shards, deletes nothing
until a sync or a run allows it; the sensor skips what is held."""

import json
import shutil

import dagster as dg
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.definitions import defs
from rag_assets.project_runs import execute_project_job
from rag_assets.sync import QUIET, run_sync
from rag_assets.tables import ALL_TABLES
from rag_assets_tests.conftest import write_corpus


def snapshot(env) -> dict:
    """Every table's rows per shard and the live points per shard."""
    lake = env.resources()["iceberg"].lakehouse()
    with env.resources()["qdrant"].index().session() as session:
        points = session.shard_counts()
    return {"tables": {spec.name: lake.row_counts(spec) for spec in ALL_TABLES}, "points": points}


def sensor_requests(env) -> list[tuple[str, str]]:
    sensor = defs().resolve_sensor_def("source_change_sensor")
    result = sensor(dg.build_sensor_context(instance=env.instance(), resources=env.resources()))
    return sorted((r.tags["rag/shard"], r.tags["rag/status"]) for r in result.run_requests)


def test_a_shard_that_lost_most_of_its_documents_is_held_until_allowed(rag_env):
    write_corpus(rag_env.source)
    assert run_sync(rag_env.instance(), rag_env.resources()).as_json()["totals"]["failed"] == 0
    before = snapshot(rag_env)
    for name in ("volcano.md", "page.html"):  # 2 of alpha's 3 documents, most of its points
        (rag_env.source / "alpha" / name).unlink()

    report = run_sync(rag_env.instance(), rag_env.resources()).as_json()
    alpha = report["shards"]["alpha"]
    assert alpha["status"] == "held" and "RAG_MAX_DELETE_FRACTION=0.5" in alpha["reason"] and report["totals"]["held"] == 1
    assert snapshot(rag_env) == before  # no table, no point changed
    assert sensor_requests(rag_env) == []  # the sensor skips it while its source stays as it is
    again = run_sync(rag_env.instance(), rag_env.resources()).as_json()["shards"]["alpha"]
    assert again["status"] == "held" and again["documents"] == 3  # reported without a run
    runs = rag_env.instance().get_runs(dg.RunsFilter(tags={"rag/shard": "alpha"}))
    assert [r.status for r in runs].count(dg.DagsterRunStatus.FAILURE) == 1  # one held run, in the UI with its reason

    # A run launched with the tag (as from the UI) lets it through; the hold is forgotten.
    result = execute_project_job("shard_sync_job", rag_env.instance(), rag_env.resources(), partition_key="alpha",
                                 tags={"rag/allow_deletes": "true"}, run_config=QUIET)
    assert result.success
    after = snapshot(rag_env)
    assert after["tables"]["raw_documents"]["alpha"] == 1 and after["points"]["alpha"] < before["points"]["alpha"]
    assert after["tables"]["vector_index"]["alpha"] == after["points"]["alpha"]
    (rag_env.source / "alpha" / "bread.txt").write_text("Rye bread keeps for a week.\n")
    assert run_sync(rag_env.instance(), rag_env.resources()).as_json()["shards"]["alpha"]["status"] == "changed"


def test_a_source_that_lists_no_shards_removes_none_until_allowed(rag_env):
    write_corpus(rag_env.source)
    run_sync(rag_env.instance(), rag_env.resources())
    before = snapshot(rag_env)
    hidden = rag_env.source.parent / "unmounted"
    shutil.move(rag_env.source, hidden)  # an unmounted folder: the source exists, empty
    rag_env.source.mkdir()

    result = CliRunner().invoke(main, ["sync", "--json"])
    assert result.exit_code == 1
    shards = json.loads(result.stdout)["shards"]
    assert {s: r["status"] for s, r in shards.items()} == dict.fromkeys(("alpha", "beta", "gamma"), "held")
    assert "no longer lists 3 of the 3 shards" in shards["alpha"]["reason"]
    assert snapshot(rag_env) == before and sensor_requests(rag_env) == []

    result = CliRunner().invoke(main, ["sync", "--json", "--allow-deletes"])
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in json.loads(result.stdout)["shards"].values()} == {"removed"}
    assert snapshot(rag_env)["points"] == {}
