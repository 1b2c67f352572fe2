"""Search modes side by side: known-item recall@10, MRR@10 and query latency of dense, sparse (BM25) and
hybrid (RRF) search on one collection.

    apt-get install postgresql-doc-15                      # the corpus: PostgreSQL's HTML documentation
    python benchmarks/hybrid.py --pages 645 --shards 4 --queries 150

One sync builds the collection (dense and BM25 vectors, the defaults). `rag-assets eval` then measures every
mode on the same known-item query set (a sentence from the middle of a document, lowercased, punctuation
and every fourth word dropped: rag_assets/evaluation.py). Latency: the same queries, each encoded for its
mode (the dense vectors in one model call, the BM25 ones by the tokenizer) and then searched one at a time
on the embedded engine: median and p95 of the engine's search, and the encode cost per query of each mode.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import build_src, pick_pages  # noqa: E402  (the same corpus as the side-by-side benchmark)
from quantization import cli  # noqa: E402

MODES = ("dense", "sparse", "hybrid")


def percentiles(times: list[float]) -> dict:
    times = sorted(times)
    return {"median_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3)}


def latency(queries: list[str]) -> dict:
    """Per mode: encode ms per query, and the median and p95 of one search (k=10) on the live collection."""
    from rag_assets import aliases
    from rag_assets.config import Settings
    from rag_assets.embedding import load_embedder
    from rag_assets.index import make_index
    from rag_assets.sparse import encoder_for, query_vectors, sparse_of

    settings = Settings.from_env()
    index = aliases.live_index(make_index(**settings.qdrant_options()))
    encoder = encoder_for(sparse_of(index.identity(index.collection)))
    embedder = load_embedder(**settings.model_options())
    embedder.encode(queries[:2])  # warm
    out = {}
    for mode in MODES:
        started = time.perf_counter()
        encoded = query_vectors(queries, mode, embedder, encoder)
        encode_ms = (time.perf_counter() - started) * 1000 / len(queries)
        times = []
        with index.session() as session:
            session.search(encoded[0][0], 10, None, encoded[0][1])  # warm the files
            for dense, sparse in encoded:
                started = time.perf_counter()
                session.search(dense, 10, None, sparse)
                times.append((time.perf_counter() - started) * 1000)
        out[mode] = {"encode_ms_per_query": round(encode_ms, 3), **percentiles(times)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=645)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=150)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rag-hybrid-") as tmp:
        home = Path(tmp) / "home"
        build_src(Path(tmp) / "src", pick_pages(args.pages), args.shards)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "DAGSTER_"))}
        env.update(RAG_HOME=str(home), RAG_SOURCE=str(Path(tmp) / "src"), DAGSTER_HOME=str(home / "dagster"),
                   RAG_EVAL_AFTER_SYNC="false", RAG_EVAL_SIZE=str(args.queries), RAG_EMBED_DEVICE="cpu")
        os.environ.update(env)
        started = time.perf_counter()
        synced = cli("sync", env=env)
        build_seconds = time.perf_counter() - started
        evaluation = cli("eval", env=env)
        import dagster as dg

        # The query set the evaluation used, kept with its retrieval_eval materialization.
        record = dg.DagsterInstance.get().fetch_materializations(dg.AssetKey("retrieval_eval"), limit=1).records[0]
        queries = [q["query"] for q in record.asset_materialization.metadata["query_set"].value]
        timings = latency(queries)
        result = {
            "pages": args.pages, "shards": args.shards, "queries": evaluation["queries"],
            "points": sum(r["chunks"] for r in synced["shards"].values()), "build_seconds": round(build_seconds, 1),
            "collection": evaluation["collection"], "default_mode": evaluation["mode"],
            "modes": {mode: {**{k: evaluation["modes"][mode][k] for k in ("recall@1", "recall@5", "recall@10", "mrr@10")},
                             **timings[mode]} for mode in MODES},
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
