"""Commit cost and metadata size as a table's history grows, with and without scheduled maintenance.

    python benchmarks/commits.py --commits 1000 --maintain-every 100 --shards 10
    python benchmarks/commits.py --commits 1000 --maintain-every 0      # no maintenance: the growth law

Replaces one shard's partition of the `vector_index` table per commit (round robin over `--shards`), the
way shard runs do, on the embedded SQLite catalog and a local warehouse. Every `--maintain-every` commits
it runs `maintenance.maintain_table` as the nightly job would, with `RAG_SNAPSHOT_RETENTION_HOURS=0` and
the clock moved past the orphan age (the benchmark compresses months into minutes; no other writer runs).
Prints, at the checkpoints, the median commit time of the last 10 commits, the snapshots held, and the
files and bytes under the table's metadata/ folder; then the ratio of the last checkpoint to the first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

from bench_env import temp_rag_env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--maintain-every", type=int, default=100, help="0: never")
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--checkpoints", default="10,100,1000")
    args = parser.parse_args()
    tmp = temp_rag_env("rag-commits-")

    import pyarrow as pa

    from rag_assets.tables import VECTOR_INDEX, Lakehouse

    lake = Lakehouse("bench", {"type": "sql", "uri": f"sqlite:///{tmp}/catalog.db", "warehouse": f"file://{tmp}/wh"}, "rag")
    if args.maintain_every:  # (imported here only: the same script then also measures code from before maintenance)
        from rag_assets.maintenance import RetentionPolicy, maintain_table

        policy = RetentionPolicy(dt.timedelta(0), dt.timedelta(hours=72), dt.timedelta(days=30))
    stamp = dt.datetime.now(dt.timezone.utc)
    checkpoints = {int(c) for c in args.checkpoints.split(",") if int(c) <= args.commits}
    times: list[float] = []
    results = []
    for i in range(1, args.commits + 1):
        shard = f"shard-{i % args.shards:04d}"
        rows = pa.table({"shard": [shard] * 20, "chunk_id": [f"{shard}-{j}" for j in range(20)],
                         "point_id": [f"p{j}" for j in range(20)], "chunk_hash": [f"h{i}-{j}" for j in range(20)],
                         "collection": ["c"] * 20, "synced_at": [stamp] * 20})
        started = time.perf_counter()
        lake.replace_partition(VECTOR_INDEX, shard, rows)
        times.append(time.perf_counter() - started)
        if i in checkpoints:
            table = lake.table(VECTOR_INDEX)
            files = [p for p in Path(table.location().removeprefix("file://"), "metadata").iterdir() if p.is_file()]
            results.append((i, statistics.median(times[-10:]), len(table.metadata.snapshots), len(files), sum(p.stat().st_size for p in files)))
            print(f"commit {i:>5}: {results[-1][1] * 1000:7.1f} ms (median of the last 10)  snapshots {results[-1][2]:>5}  "
                  f"metadata/ {results[-1][3]:>5} files {results[-1][4] / 1024:9.1f} KiB", flush=True)
        if args.maintain_every and i % args.maintain_every == 0:
            later = dt.datetime.now(dt.timezone.utc) + policy.orphan_age + dt.timedelta(minutes=1)
            maintain_table(lake, VECTOR_INDEX, policy, later)
    first, last = results[0], results[-1]
    print(f"maintain_every={args.maintain_every} shards={args.shards}: commit {last[0]} / commit {first[0]} = {last[1] / first[1]:.2f}x; "
          f"metadata/ {first[3]} -> {last[3]} files")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
