"""The cross-shard reuse lookup of a new shard's embeddings step, with 10 and with 2,000 other shards.

    python benchmarks/reuse_lookup.py --others 10,2000 --chunks 500

For each size, a fresh environment gets that many synced shards in the tables (rag_assets_tests/fabricate.py,
two one-chunk documents each, one data file per shard partition). A new shard of `--chunks` chunks, none of
them anywhere else, is then planned the way the `embeddings` asset plans it (`steps.vectors.read_vector_plan`:
its own rows, then every other shard's hashes) and timed over 3 calls (the median is printed). This is the
baseline the hash-keyed store of issue 13 must make flat.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bench_env import temp_rag_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(others: int, chunks: int) -> float:
    import dagster as dg
    import polars as pl

    from rag_assets.defs.resources import build_resources
    from rag_assets.steps.vectors import read_vector_plan
    from rag_assets_tests.fabricate import synced_shards

    tmp = temp_rag_env(f"rag-reuse-{others}-")
    resources = build_resources()
    synced_shards(tmp / "src", dg.DagsterInstance.get(), resources, others)
    lake = resources["iceberg"].lakehouse()
    model_key = resources["model"].info().key
    new = pl.DataFrame({"chunk_id": [f"new-{i}" for i in range(chunks)], "chunk_hash": [f"{i:064x}" for i in range(chunks)],
                        "token_count": [10] * chunks}, schema_overrides={"token_count": pl.Int32})
    times = []
    for _ in range(3):
        started = time.perf_counter()
        plan = read_vector_plan(lake, "new-shard", model_key, new)
        times.append(time.perf_counter() - started)
        assert plan.to_embed.height == chunks and plan.from_other_shards.is_empty()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--others", default="10,2000")
    parser.add_argument("--chunks", type=int, default=500)
    args = parser.parse_args()
    results = {int(n): measure(int(n), args.chunks) for n in args.others.split(",")}
    for n, seconds in results.items():
        print(f"other shards={n:>5}: reuse lookup for a new shard of {args.chunks} chunks {seconds * 1000:8.1f} ms", flush=True)
    first, last = min(results), max(results)
    print(f"{last} / {first} other shards: {results[last] / results[first]:.1f}x (target: within 1.5x)")


if __name__ == "__main__":
    main()
