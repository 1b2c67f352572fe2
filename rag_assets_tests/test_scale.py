"""`status` and a no-change `sync` make the same number of catalog and instance queries at any shard count."""

import json
from contextlib import contextmanager

import pytest
import sqlalchemy
from click.testing import CliRunner

from rag_assets_tests.conftest import make_env
from rag_assets_tests.fabricate import synced_shards


@contextmanager
def counted_sql():
    """Counts the SQL statements every engine in this process runs (the instance's storage and the catalog)."""
    seen = {"statements": 0}

    def count(*_args):
        seen["statements"] += 1

    sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)


def costs(tmp_path, monkeypatch, shards: int) -> tuple[int, int]:
    from rag_assets.cli import main
    from rag_assets.sync import run_sync

    env = make_env(tmp_path / str(shards), monkeypatch)
    instance, resources = env.instance(), env.resources()
    synced_shards(env.source, instance, resources, shards)
    run_sync(instance, resources)  # warm: every lazily created table and connection exists
    with counted_sql() as sync_sql:
        report = run_sync(instance, resources).as_json()
    assert {r["status"] for r in report["shards"].values()} == {"unchanged"} and len(report["shards"]) == shards
    assert report["totals"]["documents"] == 2 * shards
    with counted_sql() as status_sql:
        out = CliRunner().invoke(main, ["status", "--json"])
    rows = json.loads(out.stdout)["shards"]
    assert len(rows) == shards and all(r["in_sync"] and r["points"] == r["chunks"] == 2 for r in rows.values()), out.output
    return sync_sql["statements"], status_sql["statements"]


@pytest.mark.timeout(900)
def test_status_and_a_no_change_sync_cost_the_same_at_4_and_40_shards(tmp_path, monkeypatch):
    small, large = costs(tmp_path, monkeypatch, 4), costs(tmp_path, monkeypatch, 40)
    assert small[0] > 0 and small[1] > 0  # the listener sees the instance and catalog queries
    assert large == small, f"SQL statements (sync, status): {small} at 4 shards, {large} at 40"
