"""What the cores of this machine give: the chunker on one thread or on all, and the model on one
thread, on all, or in two processes at once (why sync workers take turns on the model).

    apt-get install postgresql-doc-15                      # the corpus: PostgreSQL's HTML documentation
    python benchmarks/cores.py --pages 100 --rounds 3

Texts: rag_assets' own parse of `--pages` PostgreSQL pages (benchmarks/peers.py's choice of pages); the
chunks: the first 400 chunks the chunker cuts from them. Each figure is the median of `--rounds`
interleaved rounds. The model is the packaged all-MiniLM-L6-v2 under ONNX Runtime (RAG_EMBED_BACKEND=onnx,
exported once into a temporary model cache).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import parsed_documents, pick_pages  # noqa: E402


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def encode_worker(texts_file: str, cache: str, threads: int) -> None:
    """One process: load the ONNX model with `threads` CPU threads, encode the texts, print the seconds."""
    from rag_assets import embedding
    from rag_assets.config import default_model

    texts = json.loads(Path(texts_file).read_text())
    embedding.limit_cpu_threads(threads)
    model = embedding.OnnxEmbedder(embedding.resolve_model(default_model(), "onnx"), Path(cache))
    model.encode(texts[:32])  # warm-up
    print(timed(lambda: model.encode(texts)))


def encode_seconds(texts_file: Path, cache: Path, threads: int, processes: int) -> float:
    """Seconds each of `processes` processes at once took to encode the texts (their mean)."""
    cmd = [sys.executable, __file__, "--encode-worker", str(texts_file), str(cache), str(threads)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return statistics.mean(float(p.communicate()[0]) for p in procs)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--encode-worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.encode_worker:
        texts_file, cache, threads = args.encode_worker
        return encode_worker(texts_file, cache, int(threads))

    from rag_assets.chunking import Chunker
    from rag_assets.config import default_model, usable_cores
    from rag_assets.embedding import resolve_model

    with tempfile.TemporaryDirectory(prefix="rag-cores-") as tmp_name:
        tmp = Path(tmp_name)
        src = tmp / "src"
        for page in pick_pages(args.pages):
            src.mkdir(exist_ok=True)
            (src / page.name).write_bytes(page.read_bytes())
        texts = [doc.text for doc in parsed_documents(src)]
        chunker = Chunker(resolve_model(default_model()), 200, 32)
        chunks = [c.text for text in texts for c in chunker.split(text)][:400]
        texts_file = tmp / "chunks.json"
        texts_file.write_text(json.dumps(chunks))
        cores = usable_cores()
        encode_seconds(texts_file, tmp / "models", cores, 1)  # the ONNX export, once, before the rounds
        rounds = []
        for _ in range(args.rounds):
            rounds.append({
                "split_serial": timed(lambda: [chunker.split(t) for t in texts]),
                "split_many": timed(lambda: list(chunker.split_many(texts))),
                "encode_1_thread": encode_seconds(texts_file, tmp / "models", 1, 1),
                f"encode_{cores}_threads": encode_seconds(texts_file, tmp / "models", cores, 1),
                "encode_1_thread_2_processes_at_once": encode_seconds(texts_file, tmp / "models", 1, 2),
            })
        median = {k: round(statistics.median(r[k] for r in rounds), 2) for k in rounds[0]}
        print(json.dumps({
            "pages": len(texts), "characters": sum(map(len, texts)), "chunks_encoded": len(chunks), "cores": cores,
            "rounds": args.rounds, "median_seconds": median,
            "split_many_speedup": round(median["split_serial"] / median["split_many"], 2),
            "encode_threads_speedup": round(median["encode_1_thread"] / median[f"encode_{cores}_threads"], 2),
            # > 1: two encodes at once are slower each than one alone (shared vector units)
            "encode_two_at_once_slowdown": round(median["encode_1_thread_2_processes_at_once"] / median["encode_1_thread"], 2),
            "rounds_seconds": [{k: round(v, 2) for k, v in r.items()} for r in rounds],
        }, indent=2))


if __name__ == "__main__":
    main()
