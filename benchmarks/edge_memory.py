"""Memory of the embedded Qdrant engine (qdrant-edge) alone, in a bare process.

    python benchmarks/edge_memory.py --points 72755

Upserts N random 384-d points with payloads like the pipeline's (~500 B of text each) into a fresh
`EdgeIndex` in batches of 1,024, then closes the session (which optimizes: builds the HNSW graph).
Prints RSS / high-water mark / anonymous / file-backed MB at start, after the upserts and after closing.
This is the part of a `vector_index` step's memory that belongs to the engine running inside the run
process; with a Qdrant server (RAG_QDRANT_URL) it is the server's instead. Results: RESULTS.md, "Memory".
"""

from __future__ import annotations

import argparse
import json
import tempfile
import uuid
from pathlib import Path

import numpy as np

from rag_assets.index import EdgeIndex, Point


def memory_mb() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) // 1024 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--points", type=int, default=72755)
    args = parser.parse_args()
    marks = {"start": memory_mb()}
    index = EdgeIndex(Path(tempfile.mkdtemp(prefix="rag-edge-memory-")), "bench")
    rng = np.random.default_rng(0)
    with index.session() as session:
        session.ensure_collection(384)
        for start in range(0, args.points, 1024):
            vectors = rng.random((min(1024, args.points - start), 384), dtype=np.float32)
            session.upsert([
                Point(str(uuid.uuid4()), v, {"shard": "s", "model": "m", "doc_id": f"d{start + i}", "chunk_id": f"c{start + i}",
                                             "chunk_index": 0, "chunk_hash": "h" * 64, "title": "t", "text": "x" * 470,
                                             "source_uri": "file:///src/s/doc.md"})
                for i, v in enumerate(vectors)
            ])
        marks["upserted"] = memory_mb()
    marks["closed"] = memory_mb()
    print(json.dumps({"points": args.points, **marks}))


if __name__ == "__main__":
    main()
