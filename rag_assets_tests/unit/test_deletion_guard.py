"""The deletion guard's two rules, at the fraction boundary."""

from rag_assets.deletion_guard import removal_hold_reason, shard_hold_reason


def test_a_run_removing_more_than_the_fraction_of_a_shards_points_is_held():
    assert shard_hold_reason("s", 5, 10, 0.5) is None  # exactly the fraction: allowed
    reason = shard_hold_reason("s", 6, 10, 0.5)
    assert "shard 's'" in reason and "6 of its 10 points (60% > RAG_MAX_DELETE_FRACTION=0.5)" in reason
    assert "--allow-deletes" in reason and "rag/allow_deletes=true" in reason
    assert shard_hold_reason("s", 0, 0, 0.5) is None  # nothing indexed yet: nothing to lose
    assert shard_hold_reason("s", 1, 10, 0.0) is not None  # 0: every deletion needs --allow-deletes
    assert shard_hold_reason("s", 10, 10, 1.0) is None  # 1: the guard is off


def test_a_sync_removing_more_than_the_fraction_of_all_shards_removes_none():
    assert removal_hold_reason(0, 0, 0.5) is None and removal_hold_reason(0, 10, 0.5) is None
    assert removal_hold_reason(5, 10, 0.5) is None
    assert "6 of the 10 shards" in removal_hold_reason(6, 10, 0.5)
    assert "1 of the 1 shards" in removal_hold_reason(1, 1, 0.5)  # a source listing nothing at all
