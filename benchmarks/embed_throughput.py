"""Embedding throughput: the raw model against the `embeddings` asset, on the same chunks, in one run.

    python benchmarks/embed_throughput.py                       # GPU-sized (CUDA if present)
    python benchmarks/embed_throughput.py --chunks 200 --device cpu --batch-sizes 16,64   # CI-sized

1. Chunks: real text (stdlib pydoc paragraphs), cut by the project's chunker, numbered so that every
   chunk is distinct (nothing is reused).
2. Raw: `SentenceTransformer.encode` (same precision as the asset: float16 on CUDA) at each batch size;
   the best tokens/s counts.
3. Asset: the chunks are written to the `chunks` Iceberg table as one shard, and the `embeddings`
   asset is materialized through Dagster (Iceberg reads, reuse lookup, model, Iceberg write).
   Reported both for the whole asset and for its model call alone (`embed_seconds`).
4. Correctness on CUDA: cosine of the asset's vectors against float32 CPU vectors of the same chunks.

Prints one JSON object (and a summary on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_env import temp_rag_env  # noqa: E402


def make_chunks(n: int) -> list[dict]:
    from incremental import paragraphs

    from rag_assets.chunking import chunk_id_for
    from rag_assets.config import default_model
    from rag_assets.embedding import resolve_model
    from rag_assets.chunking import Chunker

    chunker = Chunker(resolve_model(os.environ.get("RAG_EMBED_MODEL") or default_model()), 200, 32)
    paras = paragraphs()
    rows, copy = [], 0
    while len(rows) < n:
        for i in range(0, len(paras), 3):
            doc_id = f"bench/doc-{copy}-{i}"
            text = f"Copy {copy}.\n\n" + "\n\n".join(paras[i : i + 3])
            for c in chunker.split(text):
                rows.append({"shard": "bench", "doc_id": doc_id, "chunk_id": chunk_id_for(doc_id, c.chunk_index),
                             "chunk_index": c.chunk_index, "text": c.text, "token_count": c.token_count,
                             "char_start": c.char_start, "char_end": c.char_end, "chunk_hash": c.chunk_hash,
                             "metadata": None, "doc_hash": None})
                if len(rows) == n:
                    return rows
        copy += 1
    return rows


def raw_throughput(model_path: str, device: str, texts: list[str], tokens: int, batch_sizes: list[int]) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, device=device, local_files_only=True)
    if device.startswith("cuda"):
        model.half()
    model.encode(texts[:256], batch_size=64)  # warm-up (kernels, allocator)
    results = {}
    for bs in batch_sizes:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        model.encode(texts, batch_size=bs, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
        results[bs] = tokens / (time.perf_counter() - started)
    best = max(results, key=results.get)
    del model
    return {"by_batch_size": {str(k): round(v) for k, v in results.items()}, "best_batch_size": best, "tokens_per_s": round(results[best])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="64,128,256,512,1024")
    parser.add_argument("--check-sample", type=int, default=2000, help="chunks compared against fp32 CPU vectors")
    args = parser.parse_args()

    temp_rag_env("rag-embed-bench-", RAG_EMBED_DEVICE=args.device)

    import dagster as dg
    import numpy as np
    import pyarrow as pa
    import torch

    from rag_assets.defs.assets import embeddings
    from rag_assets.defs.partitions import shards
    from rag_assets.embedding import Embedder, pick_device
    from rag_assets.defs.resources import build_resources
    from rag_assets.tables import CHUNKS, EMBEDDINGS

    device = pick_device(args.device)
    rows = make_chunks(args.chunks)
    texts = [r["text"] for r in rows]
    tokens = sum(r["token_count"] for r in rows)
    resources = build_resources()
    model_path = resources["model"].model

    raw = raw_throughput(model_path, device, texts, tokens, [int(b) for b in args.batch_sizes.split(",")])

    lake = resources["iceberg"].lakehouse()
    lake.replace_partition(CHUNKS, "bench", pa.Table.from_pylist(rows, CHUNKS.arrow_schema))
    instance = dg.DagsterInstance.get()
    instance.add_dynamic_partitions(shards.name, ["bench"])
    resources["model"].embedder().encode(texts[:256])  # load + warm-up outside the timed run, as the raw figure does
    result = dg.materialize([embeddings], partition_key="bench", instance=instance, resources=resources,
                            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})
    meta = {k: v.value for k, v in result.get_asset_materialization_events()[0].materialization.metadata.items()}
    assert meta["embedded"] == len(set(r["chunk_hash"] for r in rows)), meta

    vectors = np.stack(lake.read_partition(EMBEDDINGS, "bench", ("chunk_id", "vector")).sort_by("chunk_id")["vector"].to_numpy(zero_copy_only=False))
    order = sorted(range(len(rows)), key=lambda i: rows[i]["chunk_id"])
    sample = order[: args.check_sample]
    cpu = Embedder(model_path, "cpu", 64)
    reference = cpu.encode([texts[i] for i in sample])
    cosine = (vectors[: len(sample)] * reference).sum(axis=1)

    out = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({os.cpu_count()} cores)",
        "chunks": len(rows), "tokens": tokens,
        "raw_model": raw,
        "asset_model_call_tokens_per_s": round(tokens / meta["embed_seconds"]),
        "asset_tokens_per_s": round(tokens / meta["seconds"]),
        "asset_seconds": meta["seconds"], "asset_embed_seconds": meta["embed_seconds"],
        "ratio_asset_to_raw": round(tokens / meta["seconds"] / raw["tokens_per_s"], 3),
        "ratio_model_call_to_raw": round(tokens / meta["embed_seconds"] / raw["tokens_per_s"], 3),
        "min_cosine_vs_fp32_cpu": round(float(cosine.min()), 5),
        "checked_chunks": len(sample),
    }
    print(json.dumps(out))
    print(f"{out['device']}: raw {raw['tokens_per_s']:,} tok/s (batch {raw['best_batch_size']}), asset "
          f"{out['asset_tokens_per_s']:,} tok/s ({out['ratio_asset_to_raw']:.0%}), model call "
          f"{out['asset_model_call_tokens_per_s']:,} tok/s; min cosine {out['min_cosine_vs_fp32_cpu']}", file=sys.stderr)


if __name__ == "__main__":
    main()
