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

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quantization import cli, corpus_args, corpus_env, evaluated_queries, percentiles, timed_cli  # noqa: E402  (the peers benchmark's corpus)

MODES = ("dense", "sparse", "hybrid")


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
    args = corpus_args(pages=645)
    with tempfile.TemporaryDirectory(prefix="rag-hybrid-") as tmp:
        _, env = corpus_env(Path(tmp), args)
        synced, build_seconds = timed_cli("sync", env=env)
        evaluation = cli("eval", env=env)
        queries = evaluated_queries()
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
