"""The frame bookkeeping of the shard steps: digests (data versions) and the diff against the live index."""

import hashlib
import random

import polars as pl

from rag_assets.steps.rows import frame_digest
from rag_assets.steps.points import mismatches, points_to_sync


def python_digest(rows: list[tuple]) -> str:
    """How data versions were computed before the bookkeeping moved to frames (sorted Python tuples):
    the frame digest must give the same value, or every shard would look changed after an upgrade."""
    h = hashlib.sha256()
    for row in sorted(rows):
        h.update("\0".join(map(str, row)).encode() + b"\n")
    return h.hexdigest()


def test_frame_digest_equals_the_sorted_tuple_digest():
    rng = random.Random(3)
    alphabet = ["a", "b", "Z", "é", "日", "✓", "\U0001f600", " ", "#", "0"]
    words = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 6))) for _ in range(3000)]
    rows = [(rng.choice(words), rng.choice(words), rng.randint(-5, 10**12)) for _ in range(200_000)]
    rows += [("ab", "x", 1), ("abc", "x", 1), ("ab", "", 1)]  # prefixes and empty strings sort as Python's do
    frame = pl.DataFrame(rows, schema={"a": pl.String, "b": pl.String, "n": pl.Int64}, orient="row")
    assert frame_digest(frame) == python_digest(rows)
    assert frame_digest(frame.sample(fraction=1.0, shuffle=True, seed=1)) == python_digest(rows)  # order-independent
    assert frame_digest(frame.head(0)) == python_digest([])
    assert frame_digest(frame.head(-1)) != python_digest(rows)


def frame(pairs: dict[str, str]) -> pl.DataFrame:
    return pl.DataFrame({"point_id": list(pairs), "chunk_hash": list(pairs.values())}, schema={"point_id": pl.String, "chunk_hash": pl.String})


def test_points_to_sync_and_mismatches():
    desired = frame({"p1": "h1", "p2": "h2", "p3": "h3"}).with_columns(chunk_id=pl.col("point_id") + "-c")
    live = frame({"p2": "h2", "p3": "old", "p4": "h4"})
    upsert, delete = points_to_sync(desired, live)
    assert upsert["point_id"].to_list() == ["p1", "p3"] and upsert.columns == desired.columns
    assert delete.to_list() == ["p4"]
    assert mismatches(desired, live) == {"missing": ["p1"], "extra": ["p4"], "wrong_hash": ["p3"]}
    assert mismatches(desired, desired.select("point_id", "chunk_hash")) == {"missing": [], "extra": [], "wrong_hash": []}
    nothing, none = points_to_sync(desired, desired)
    assert nothing.is_empty() and none.is_empty()


def test_index_rows_keep_synced_at_of_unchanged_points_only():
    import datetime as dt

    import pytest

    from rag_assets.steps.points import ShardMismatch, index_rows, require_model

    t0, t1 = (dt.datetime(2026, m, 1, tzinfo=dt.timezone.utc) for m in (1, 2))
    desired = frame({"p1": "h1", "p2": "h2new", "p3": "h3"}).with_columns(chunk_id=pl.col("point_id") + "-c", model=pl.lit("m"))
    previous = frame({"p1": "h1", "p2": "h2", "p9": "h9"}).with_columns(synced_at=pl.lit(t0, dtype=pl.Datetime("us", "UTC")))
    rows = index_rows(desired, previous, "s", "coll", t1)
    assert rows.columns == ["shard", "chunk_id", "point_id", "chunk_hash", "collection", "synced_at"]
    assert rows.select("point_id", "synced_at").rows() == [("p1", t0), ("p2", t1), ("p3", t1)]
    assert set(rows["shard"]) == {"s"} and set(rows["collection"]) == {"coll"}
    require_model(desired, "m", "s")
    with pytest.raises(ShardMismatch, match="3 embeddings of shard 's' are not from m2"):
        require_model(desired, "m2", "s")
