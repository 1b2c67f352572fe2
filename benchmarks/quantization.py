"""Quantization: recall@10, query latency and bytes per point of float32, int8 and binary collections.

    apt-get install postgresql-doc-15                      # the corpus: PostgreSQL's HTML documentation
    python benchmarks/quantization.py --pages 200 --shards 4 --queries 150

One sync builds the float32 collection (embedding every chunk); `rag-assets migrate --quantization int8`
and `--quantization binary` then build the quantized collections beside it from the vector store (no
model call) and evaluate the live and the new collection on the same known-item query set (the
migration's own evaluation, rescoring with the float32 vectors). Latency: the same queries, encoded once,
searched one at a time against each collection on the embedded engine (median and p95 of one search).
Bytes per point: the files of each collection's folder on disk (allocated), and of its quantized-vector
files alone. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import build_src, pick_pages  # noqa: E402  (the same corpus as the side-by-side benchmark)


def cli(*args: str, env: dict) -> dict:
    out = subprocess.run([str(Path(sys.executable).with_name("rag-assets")), *args, "--json"], env=env,
                         capture_output=True, text=True)
    if out.returncode not in (0, 1):
        sys.exit(out.stderr[-3000:])
    return json.loads(out.stdout)


def timed_cli(*args: str, env: dict) -> tuple[dict, float]:
    """`cli(...)` and its wall-clock seconds."""
    started = time.perf_counter()
    report = cli(*args, env=env)
    return report, time.perf_counter() - started


def allocated(path: Path, only=lambda p: True) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.rglob("*") if p.is_file() and only(p))


def latency(home: Path, collection: str, queries: list[str]) -> dict:
    from rag_assets.config import Settings
    from rag_assets.embedding import load_embedder
    from rag_assets.index import make_index

    settings = Settings.from_env()
    vectors = load_embedder(**settings.model_options()).encode(queries)
    index = make_index(**{**settings.qdrant_options(), "collection": collection})
    times = []
    with index.session() as session:
        session.search(vectors[0], 10)  # warm the files
        for v in vectors:
            started = time.perf_counter()
            session.search(v, 10)
            times.append((time.perf_counter() - started) * 1000)
    return percentiles(times)


def percentiles(times: list[float]) -> dict:
    """Median and p95 of timings in milliseconds."""
    times = sorted(times)
    return {"median_ms": round(statistics.median(times), 3), "p95_ms": round(times[int(0.95 * (len(times) - 1))], 3)}


def corpus_args(pages: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=pages)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=150)
    return parser.parse_args()


def corpus_env(tmp: Path, args: argparse.Namespace) -> tuple[Path, dict]:
    """`args.pages` PostgreSQL pages in `args.shards` shards under tmp/src, and a throwaway rag_assets home
    that evaluates with `args.queries` known-item queries: (its RAG_HOME, the settings, also exported here)."""
    home = tmp / "home"
    build_src(tmp / "src", pick_pages(args.pages), args.shards)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_", "DAGSTER_"))}
    env.update(RAG_HOME=str(home), RAG_SOURCE=str(tmp / "src"), DAGSTER_HOME=str(home / "dagster"),
               RAG_EVAL_AFTER_SYNC="false", RAG_EVAL_SIZE=str(args.queries), RAG_EMBED_DEVICE="cpu")
    os.environ.update(env)
    return home, env


def evaluated_queries() -> list[str]:
    """The query set the newest evaluation asked, kept with its retrieval_eval materialization."""
    import dagster as dg

    record = dg.DagsterInstance.get().fetch_materializations(dg.AssetKey("retrieval_eval"), limit=1).records[0]
    return [q["query"] for q in record.asset_materialization.metadata["query_set"].value]


def main() -> None:
    args = corpus_args(pages=200)
    with tempfile.TemporaryDirectory(prefix="rag-quant-") as tmp:
        home, env = corpus_env(Path(tmp), args)
        synced, build_seconds = timed_cli("sync", env=env)
        runs = {}
        for kind in ("int8", "binary"):
            report, seconds = timed_cli("migrate", "--quantization", kind, env=env)
            runs[kind] = {"seconds": round(seconds, 1), "switched": report["switched"],
                          "embedded": sum(r["embedded"] for r in report["shards"].values()),
                          "old": report["eval"]["old"], "new": report["eval"]["new"], "to": report["to"]}
            if report["switched"]:  # measure the next one against float32 again
                cli("migrate", "--quantization", "none", "--force", env=env)
        float32 = runs["int8"]["old"]["collection"]
        queries = evaluated_queries()  # the query set the migrations evaluated with
        qdrant = home / "qdrant"
        points = sum(r["chunks"] for r in synced["shards"].values())
        result = {"pages": args.pages, "shards": args.shards, "points": points, "queries": len(queries),
                  "float32_build_seconds": round(build_seconds, 1), "collections": {}}
        for kind, name in (("none", float32), ("int8", runs["int8"]["to"]), ("binary", runs["binary"]["to"])):
            evaluation = runs["int8"]["old"] if kind == "none" else runs[kind]["new"]
            result["collections"][kind] = {
                "collection": name, "recall@10": evaluation["recall@10"], "mrr@10": evaluation["mrr@10"],
                "bytes_per_point": round(allocated(qdrant / name) / points),
                "quantized_bytes_per_point": round(allocated(qdrant / name, lambda p: "quant" in str(p.relative_to(qdrant / name))) / points),
                "quantized_files": sorted({p.name for p in (qdrant / name).rglob("*") if "quant" in str(p.relative_to(qdrant / name)) and p.is_file()}),
                **latency(home, name, queries),
                **({"migrate_seconds": runs[kind]["seconds"], "embedded": runs[kind]["embedded"], "switched": runs[kind]["switched"]}
                   if kind != "none" else {}),
            }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
