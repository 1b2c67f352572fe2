"""The shard-sync contract: why each shard runs (or does not)."""

import pytest

from rag_assets.shard_state import FINGERPRINT, ShardPlan, plan_shards

SETTINGS = {"index_chunker": "c1", "index_model": "m@1", "index_collection": "rag_chunks"}


def synced(fp: str, **settings) -> dict:
    return {FINGERPRINT: fp, **SETTINGS, **settings}


def test_each_shard_gets_the_status_and_reason_its_record_calls_for():
    listing = {"new": "f", "unsynced": "f", "edited": "f2", "rechunked": "f", "same": "f"}
    known = {"unsynced", "edited", "rechunked", "same", "vanished"}
    records = {"edited": synced("f1"), "rechunked": synced("f", index_chunker="c0"), "same": synced("f"), "vanished": synced("f")}
    plans = {p.shard: p for p in plan_shards(listing, known, records, SETTINGS)}
    assert plans == {
        "new": ShardPlan("new", "new", "f"),
        "unsynced": ShardPlan("unsynced", "new", "f"),  # a partition whose run never reached the index
        "edited": ShardPlan("edited", "changed", "f2", "source"),
        "rechunked": ShardPlan("rechunked", "changed", "f", "settings"),
        "same": ShardPlan("same", "unchanged", "f"),
        "vanished": ShardPlan("vanished", "removed"),
    }


def test_a_record_from_before_settings_were_recorded_counts_as_changed_settings():
    plans = plan_shards({"old": "f"}, {"old"}, {"old": {FINGERPRINT: "f"}}, SETTINGS)
    assert plans == [ShardPlan("old", "changed", "f", "settings")]


def test_another_model_or_collection_re_syncs_every_shard():
    # A model change is refused earlier, against the alias (`check_live`, test_aliases.py); the plan only
    # says which shards differ from their records.
    records = {"a": synced("f", index_model="m@0")}
    assert plan_shards({"a": "f"}, {"a"}, records, SETTINGS) == [ShardPlan("a", "changed", "f", "settings")]
    other = {"a": synced("f", index_model="m@0", index_collection="old")}
    assert plan_shards({"a": "f"}, {"a"}, other, SETTINGS) == [ShardPlan("a", "changed", "f", "settings")]
    # A record of a shard that is no longer a partition does not count.
    assert plan_shards({}, set(), records, SETTINGS) == []

def test_new_shards_and_changed_settings_build_whole_shards_edits_do_not():
    """What `rag-assets sync` leaves to its workers (edits) and what it builds itself (whole shards)."""
    plans = [ShardPlan("a", "new"), ShardPlan("b", "changed", "f", "settings"), ShardPlan("c", "changed", "f", "source"),
             ShardPlan("d", "removed"), ShardPlan("e", "unchanged")]
    assert [p.shard for p in plans if p.whole_shard] == ["a", "b"]
