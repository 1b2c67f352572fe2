"""retrieval_eval on a real collection: `rag-assets eval`, the kept query set, the tolerance check, the
query file, and the evaluation after syncs (CLI and sensor)."""

import json

import dagster as dg
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.definitions import defs
from rag_assets.sync import run_sync
from rag_assets_tests.conftest import write_corpus

EVAL = dg.AssetKey("retrieval_eval")


def eval_json(*args: str) -> tuple[int, dict]:
    result = CliRunner().invoke(main, ["eval", "--json", *args])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def test_eval_measures_the_collection_keeps_its_queries_and_fails_on_a_drop(rag_env):
    write_corpus(rag_env.source)
    run_sync(rag_env.instance(), rag_env.resources())

    code, first = eval_json()
    assert code == 0 and first["collection"].startswith("rag_chunks__") and first["alias"] == "rag_chunks" and first["query_source"] == "known-item (new)"
    assert first["queries"] >= 5  # one per document with a sentence of 8-40 words
    assert set(first) >= {"recall@1", "recall@5", "recall@10", "mrr@10"}
    assert first["recall@10"] >= 0.8 and first["recall@1"] <= first["recall@5"] <= first["recall@10"]
    code, second = eval_json()
    assert second["query_source"] == "known-item (kept)" and second["query_set_id"] == first["query_set_id"]
    assert second["recall@10"] == first["recall@10"] and second["passed"]

    # Metrics are materialization metadata (the UI plots them), with the check beside them.
    record = rag_env.instance().fetch_materializations(EVAL, limit=1).records[0]
    assert record.asset_materialization.metadata["recall@10"].value == second["recall@10"]

    # Most of the collection lost: recall falls beyond the tolerance, the check fails, eval exits 1.
    with rag_env.resources()["qdrant"].index().session() as session:
        for shard in ("alpha", "beta"):
            session.delete_shard(shard)
    code, dropped = eval_json()
    assert code == 1 and not dropped["passed"] and dropped["recall@10"] < first["recall@10"] - 0.02
    assert "fell to" in dropped["check"]
    checks = rag_env.instance().event_log_storage.get_asset_check_execution_history(
        dg.AssetCheckKey(EVAL, "recall_not_worse"), limit=1)
    assert checks[0].event.dagster_event.event_specific_data.passed is False
    # The accepted value stays the last good one: the next evaluation still fails.
    assert eval_json()[0] == 1
    # A collection that does not exist is an error, not a recall of 0 that passes as a first evaluation.
    result = CliRunner().invoke(main, ["eval", "--collection", "no_such_collection"])
    assert result.exit_code == 1 and "collection 'no_such_collection' does not exist" in result.output


def test_queries_from_a_file(rag_env, monkeypatch, tmp_path):
    write_corpus(rag_env.source)
    run_sync(rag_env.instance(), rag_env.resources())
    queries = tmp_path / "queries.jsonl"
    queries.write_text(
        json.dumps({"query": "lava erupting from a mountain", "doc_ids": ["alpha/volcano.md"]}) + "\n"
        + json.dumps({"query": "how does the moon move the sea", "doc_ids": ["beta/records.jsonl#q2"]}) + "\n"
    )
    monkeypatch.setenv("RAG_EVAL_QUERIES", str(queries))
    code, report = eval_json()
    assert code == 0 and report["queries"] == 2 and report["query_source"] == f"file {queries}"
    assert report["recall@10"] == 1.0 and report["mrr@10"] > 0.5


def test_an_evaluation_follows_every_sync_that_changed_the_index(rag_env, monkeypatch):
    monkeypatch.setenv("RAG_EVAL_AFTER_SYNC", "true")
    write_corpus(rag_env.source)
    result = CliRunner().invoke(main, ["sync", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["eval"]["queries"] >= 5
    nothing = json.loads(CliRunner().invoke(main, ["sync", "--json"]).stdout)
    assert "eval" not in nothing  # nothing changed, nothing to measure

    # The sensor asks for one evaluation once the shard runs have settled, per state of the index.
    sensor = defs().resolve_sensor_def("source_change_sensor")
    context = dg.build_sensor_context(instance=rag_env.instance(), resources=rag_env.resources())
    requests = sensor(context).run_requests
    assert [(r.job_name, r.tags["rag/eval"]) for r in requests] == [("retrieval_eval_job", "after-sync")]
    assert requests[0].run_key.startswith("retrieval_eval@")
    (rag_env.source / "alpha" / "bread.txt").write_text("Rye bread keeps for a week.\n")
    requests = sensor(dg.build_sensor_context(instance=rag_env.instance(), resources=rag_env.resources())).run_requests
    assert [r.job_name for r in requests] == ["shard_sync_job"]  # shards first; the evaluation once they are done
