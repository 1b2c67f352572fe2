"""`rag-assets rollback --to`: tables, index and sync state back to a moment; the next sync neither undoes it
nor re-embeds; a time outside the window is a clear error that changes nothing."""

import datetime as dt
import json
import shutil
import time

import polars as pl
from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.defs.partitions import shards
from rag_assets.sync import run_sync
from rag_assets.tables import ALL_TABLES, RAW_DOCUMENTS
from rag_assets_tests.conftest import write_corpus

EDITED = "Knitting\n========\n\nCables cross stitches to make a braided rope pattern.\n"
ORIGINAL = "A purl stitch is the reverse of a knit stitch"


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout + (result.stderr or "")


def top_doc(query: str) -> dict:
    code, out = cli("search", query, "-k", "1", "--json")
    assert code == 0, out
    return json.loads(out)["hits"][0]


def state(env) -> dict:
    lake = env.resources()["iceberg"].lakehouse()
    with env.resources()["qdrant"].index().session() as session:
        points = session.shard_counts()
    return {"tables": {spec.name: lake.row_counts(spec) for spec in ALL_TABLES}, "points": points,
            "partitions": sorted(env.instance().get_dynamic_partitions(shards.name))}


def test_rollback_restores_tables_index_and_sync_state(rag_env):
    write_corpus(rag_env.source)
    run_sync(rag_env.instance(), rag_env.resources())
    then = state(rag_env)
    time.sleep(0.05)
    moment = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.05)

    # After the moment: an edit, a new shard and a removed shard.
    (rag_env.source / "beta" / "guide.rst").write_text(EDITED)
    (rag_env.source / "delta").mkdir()
    (rag_env.source / "delta" / "owls.md").write_text("# Owls\n\nBarn owls hunt voles by sound alone in the dark.\n")
    shutil.rmtree(rag_env.source / "gamma")
    after = run_sync(rag_env.instance(), rag_env.resources()).as_json()["shards"]
    assert {s: r["status"] for s, r in after.items()} == {"alpha": "unchanged", "beta": "changed", "delta": "new", "gamma": "removed"}
    assert top_doc("braided rope pattern")["text"].startswith("Knitting")

    code, out = cli("rollback", "--to", moment.isoformat(), "--json")
    assert code == 0, out
    report = json.loads(out)
    assert report["tables"]["raw_documents"]["rows_after"] == sum(then["tables"]["raw_documents"].values())
    restored = state(rag_env)
    assert restored["tables"] == then["tables"] and restored["points"] == then["points"]  # the index too
    assert restored["partitions"] == ["alpha", "beta", "delta", "gamma"]  # gamma back; delta kept (its source is there)
    beta = pl.from_arrow(rag_env.resources()["iceberg"].lakehouse().read_partition(RAW_DOCUMENTS, "beta", ("doc_id", "text")))
    assert any(ORIGINAL in t for t in beta["text"])
    assert ORIGINAL in top_doc("reverse of a knit stitch")["text"]
    code, out = cli("status", "--json")
    assert code == 0 and all(row["in_sync"] for s, row in json.loads(out)["shards"].items() if s != "delta")

    # The next sync neither undoes the rollback nor embeds anything; gamma, gone from the source, is held.
    again = run_sync(rag_env.instance(), rag_env.resources()).as_json()
    rows = again["shards"]
    assert {s: r["status"] for s, r in rows.items()} == {"alpha": "unchanged", "beta": "unchanged", "delta": "unchanged", "gamma": "held"}
    assert "restored by a rollback" in rows["gamma"]["reason"] and again["totals"]["embedded"] == 0
    assert state(rag_env)["tables"] == then["tables"]

    # A change after the rollback syncs that shard from its source; --allow-deletes lets gamma go.
    (rag_env.source / "beta" / "guide.rst").write_text(EDITED.replace("braided rope", "twisted cable"))
    assert run_sync(rag_env.instance(), rag_env.resources()).as_json()["shards"]["beta"]["status"] == "changed"
    assert "twisted cable" in top_doc("twisted cable pattern")["text"]
    final = run_sync(rag_env.instance(), rag_env.resources(), allow_deletes=True).as_json()["shards"]
    assert final["gamma"]["status"] == "removed" and "gamma" not in state(rag_env)["points"]


def test_a_time_outside_the_window_is_a_clear_error_that_changes_nothing(rag_env, monkeypatch):
    write_corpus(rag_env.source)
    run_sync(rag_env.instance(), rag_env.resources())
    before = state(rag_env)
    week_ago = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=200)).isoformat()
    code, out = cli("rollback", "--to", week_ago)
    assert code == 1 and "outside the snapshot retention window (RAG_SNAPSHOT_RETENTION_HOURS=168" in out
    code, out = cli("rollback", "--to", (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat())
    assert code == 1 and "in the future" in out
    code, out = cli("rollback", "--to", "last tuesday")
    assert code == 1 and "is not an ISO 8601 time" in out
    assert state(rag_env) == before  # refused before anything changed
    # Within the window, but the tables' history back to then was expired (maintenance with 0 hours): refused.
    moment = dt.datetime.now(dt.timezone.utc)
    time.sleep(0.05)
    (rag_env.source / "beta" / "guide.rst").write_text(EDITED)
    run_sync(rag_env.instance(), rag_env.resources())
    edited = state(rag_env)
    monkeypatch.setenv("RAG_SNAPSHOT_RETENTION_HOURS", "0")
    code, out = cli("maintain", "--json")
    assert code == 0, out
    monkeypatch.setenv("RAG_SNAPSHOT_RETENTION_HOURS", "168")
    code, out = cli("rollback", "--to", moment.isoformat())
    assert code == 1 and "keeps history back to" in out and "older snapshots were expired" in out
    assert state(rag_env) == edited
    # Before the first sync, the tables were empty: rolling back there is allowed, and empties them.
    code, out = cli("rollback", "--to", (moment - dt.timedelta(minutes=30)).isoformat(), "--json")
    assert code == 0, out
    emptied = state(rag_env)
    assert all(not rows for rows in emptied["tables"].values()) and emptied["points"] == {}


def test_a_rollback_in_flight_keeps_every_shard_busy(rag_env):
    """No sensor run, sync or migration step interleaves with a rollback: while its run is in flight, every
    shard is busy (only the rollback itself does not count its own run)."""
    from dagster._core.storage.dagster_run import DagsterRun, DagsterRunStatus
    from dagster._core.utils import make_new_run_id

    from rag_assets.runs import busy_shards, worker_tags

    write_corpus(rag_env.source)
    instance = rag_env.instance()
    run_sync(instance, rag_env.resources())
    known = set(instance.get_dynamic_partitions(shards.name))
    rolling = instance.add_run(DagsterRun(job_name="rollback_job", run_id=make_new_run_id(), status=DagsterRunStatus.STARTED,
                                          tags=worker_tags()))
    assert busy_shards(instance) == known and busy_shards(instance, except_run=rolling.run_id) == set()
    shard = sorted(known)[0]
    (rag_env.source / shard / "added.md").write_text("# Added\n\nA paragraph that arrives while the rollback runs.\n")
    report = run_sync(instance, rag_env.resources()).as_json()
    assert report["shards"][shard]["status"] == "busy"
    instance.report_run_failed(rolling)  # the rollback ended: the shard runs again
    assert busy_shards(instance) == set()
    assert run_sync(instance, rag_env.resources()).as_json()["shards"][shard]["status"] == "changed"
