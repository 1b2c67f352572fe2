"""A new shard's reuse lookup and its whole `embeddings` step, with 10 and with 2,000 other shards.

    python benchmarks/reuse_lookup.py --others 10,2000 --chunks 500

For each size, a fresh environment gets that many synced shards in the tables (rag_assets_tests/fabricate.py,
two one-chunk documents each, one data file per shard partition), and the vector store gets their vectors
the way the runs that embedded them would have left it: one append per shard, each followed by the store's
own merging (`--store-appends whole` instead writes them in one append: the layout after maintenance).
Then:
- lookup: a new shard of `--chunks` chunks found nowhere else is planned the way the `embeddings` asset
  plans it (`steps.vectors.read_vector_plan`: its own rows, then the store), median of 3 calls;
- step: two new shards of `--chunks` chunks each (distinct texts) go through raw_documents and chunks, then
  the `embeddings` asset alone is materialized for each (the real model on CPU, loaded before timing), and
  its `seconds` metadata is printed.
`--compare-with DIR` runs the lookup with the code under DIR (e.g. `git archive e35fd17 rag_assets`, the last commit before the store),
which scanned the embeddings table instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench_env import temp_rag_env

ROOT = Path(__file__).resolve().parents[1]


def fill_store(lake, whole: bool) -> None:
    import polars as pl
    from pyiceberg.expressions import AlwaysTrue

    from rag_assets.tables import EMBEDDINGS, VECTOR_STORE
    from rag_assets.vector_store import SEEDED, VectorStore

    with lake.table(VECTOR_STORE).transaction() as tx:  # filled here, not seeded on first use
        tx.set_properties({SEEDED: "true"})
    store = VectorStore(lake)
    rows = pl.from_arrow(lake.scan(EMBEDDINGS, AlwaysTrue(), ("shard", "model", "chunk_hash", "dim", "vector", "embedded_at")))
    groups = [rows] if whole else rows.partition_by("shard", maintain_order=True)
    for group in groups:
        store.add(group["model"][0], [group.drop("shard", "model").to_arrow()])


def sha(text: str) -> str:  # random-looking hashes, like the chunk hashes they stand for
    return hashlib.sha256(text.encode()).hexdigest()


def new_shard_texts(name: str, chunks: int) -> dict[str, str]:
    # One ~40-word paragraph per document: one chunk each, distinct per shard.
    return {f"doc-{i}.md": f"# {name} {i}\n\n" + " ".join(f"{name}-word{i}-{j} about topic {j % 17} and item {i}" for j in range(8)) + "\n"
            for i in range(chunks)}


def measure(others: int, chunks: int, whole: bool, steps: bool) -> dict:
    import dagster as dg
    import polars as pl

    from rag_assets.defs.assets import chunks as chunks_asset, embeddings, raw_documents
    from rag_assets.defs.partitions import shards
    from rag_assets.defs.resources import build_resources
    from rag_assets.steps.vectors import read_vector_plan
    from rag_assets.vector_store import VectorStore
    from rag_assets_tests.fabricate import synced_shards

    tmp = temp_rag_env(f"rag-reuse-{others}-")
    resources = build_resources()
    instance = dg.DagsterInstance.get()
    synced_shards(tmp / "src", instance, resources, others)
    lake = resources["iceberg"].lakehouse()
    started = time.perf_counter()
    fill_store(lake, whole)
    fill_seconds = time.perf_counter() - started
    store = VectorStore(lake)
    model_key = resources["model"].info().key
    new = pl.DataFrame({"chunk_id": [f"new-{i}" for i in range(chunks)], "chunk_hash": [sha(f"new-{i}") for i in range(chunks)],
                        "token_count": [10] * chunks}, schema_overrides={"token_count": pl.Int32})
    times, files_read = [], 0
    for _ in range(3):
        began = time.perf_counter()
        plan = read_vector_plan(lake, store, "new-shard", model_key, new)
        times.append(time.perf_counter() - began)
        assert plan.to_embed.height == chunks and plan.from_store.hashes.is_empty()
        files_read = plan.from_store.files_read
    result = {"lookup_s": statistics.median(times), "store_files": len(store.files(model_key)), "files_read": files_read,
              "fill_s": fill_seconds}
    if steps:
        resources["model"].embedder().encode(["warm up"])  # the model load is not the lookup's cost
        step_seconds = []
        for name in ("new-a", "new-b"):
            folder = tmp / "src" / name
            folder.mkdir()
            for file, text in new_shard_texts(name, chunks).items():
                (folder / file).write_text(text)
            instance.add_dynamic_partitions(shards.name, [name])
            dg.materialize([raw_documents, chunks_asset], partition_key=name, resources=resources, instance=instance)
            out = dg.materialize([embeddings], partition_key=name, resources=resources, instance=instance,
                                 selection=[embeddings])
            meta = out.asset_materializations_for_node("embeddings")[0].metadata
            assert meta["embedded"].value == chunks, meta["embedded"]
            step_seconds.append(meta["seconds"].value)
        result["step_s"] = step_seconds
    return result


def old_lookup(code: Path, others: int, chunks: int) -> float:
    """The same lookup with old code (which read every other shard's hashes from `embeddings`)."""
    script = f"""
import hashlib, sys, time, statistics, dagster as dg, polars as pl
sys.path.insert(0, {str(ROOT / 'benchmarks')!r})
from bench_env import temp_rag_env
from rag_assets.defs.resources import build_resources
from rag_assets.steps.vectors import read_vector_plan
sys.path.insert(0, {str(ROOT)!r})
from rag_assets_tests.fabricate import synced_shards
tmp = temp_rag_env("rag-reuse-old-")
resources = build_resources()
synced_shards(tmp / "src", dg.DagsterInstance.get(), resources, {others})
lake = resources["iceberg"].lakehouse()
key = resources["model"].info().key
new = pl.DataFrame({{"chunk_id": [f"n{{i}}" for i in range({chunks})], "chunk_hash": [hashlib.sha256(f"new-{{i}}".encode()).hexdigest() for i in range({chunks})],
                    "token_count": [10] * {chunks}}}, schema_overrides={{"token_count": pl.Int32}})
t = []
for _ in range(3):
    s = time.perf_counter(); read_vector_plan(lake, "new-shard", key, new); t.append(time.perf_counter() - s)
print(statistics.median(t))
"""
    env = {**os.environ, "PYTHONPATH": str(code)}
    # (cwd: `python -c` puts the working folder first on sys.path, before PYTHONPATH)
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=code)
    if out.returncode:
        raise RuntimeError(f"the old code's lookup failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--others", default="10,2000")
    parser.add_argument("--chunks", type=int, default=500)
    parser.add_argument("--store-appends", choices=("per-shard", "whole"), default="per-shard")
    parser.add_argument("--no-steps", action="store_true", help="the lookup only")
    parser.add_argument("--compare-with", type=Path, help="old code folder (lookup only)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    results = {}
    for n in (int(n) for n in args.others.split(",")):
        results[n] = measure(n, args.chunks, args.store_appends == "whole", not args.no_steps)
        if args.compare_with:
            results[n]["old_lookup_s"] = old_lookup(args.compare_with, n, args.chunks)
        print(f"other shards={n:>5}: " + json.dumps(results[n]), flush=True)
    first, last = min(results), max(results)
    print(f"lookup {last} / {first} other shards: {results[last]['lookup_s'] / results[first]['lookup_s']:.2f}x (target: within 1.5x)")
    if "step_s" in results[first]:
        ratio = statistics.median(results[last]["step_s"]) / statistics.median(results[first]["step_s"])
        print(f"embeddings step {last} / {first} other shards: {ratio:.2f}x (target: within 1.5x)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
