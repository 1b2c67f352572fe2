"""What loading the embedding model costs a fresh process, each way it can load, and whether the
TorchScript trace encodes as fast as the transformers model it was traced from.

    python benchmarks/model_load.py --runs 5 --texts 900

Ways (the packaged model, on the CPU): `transformers` (torch `Embedder` without a model cache:
`PooledTransformer.load`), `trace` (with a model cache holding its TorchScript trace, made before the
timed runs), `onnx` (`OnnxEmbedder`, its export made before). Each run is a fresh interpreter that
imports rag_assets.embedding, loads the model and encodes one text; it reports wall and CPU seconds
and whether transformers was imported. Then, in one process, both torch models encode the same `--texts`
texts (pieces of PostgreSQL's HTML documentation, if installed, else generated), interleaved over 2 rounds.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_LOAD = """
import json, sys, time
started = time.perf_counter()
from pathlib import Path
from rag_assets.config import default_model
from rag_assets.embedding import load_embedder_here
way, cache = sys.argv[1], sys.argv[2]
embedder = load_embedder_here(default_model(), "onnx" if way == "onnx" else "torch", "cpu", 64, 0,
                              "" if way == "transformers" else cache)
embedder.encode(["one text"])
print(json.dumps({"seconds": time.perf_counter() - started, "cpu": time.process_time(),
                  "transformers_imported": "transformers" in sys.modules}))
"""
DOCS = Path("/usr/share/doc/postgresql-doc-15/html")


def load_once(way: str, cache: str) -> dict:
    out = subprocess.run([sys.executable, "-c", ONE_LOAD, way, cache], capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if out.returncode != 0:
        sys.exit(f"{way} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


def sample_texts(n: int) -> list[str]:
    """~900-character pieces of the documentation's text (about one 200-token chunk each)."""
    texts: list[str] = []
    for page in sorted(DOCS.glob("*.html")) if DOCS.is_dir() else []:
        text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page.read_text(errors="ignore")))
        texts += [text[i:i + 900] for i in range(0, len(text) - 100, 800)]
        if len(texts) >= n:
            return texts[:n]
    rng = random.Random(0)
    words = "glacier orchard lighthouse typeset bee railway canal volcano tide comet knit chess bread".split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 180))) for _ in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--texts", type=int, default=900)
    args = parser.parse_args()

    from rag_assets.config import default_model
    from rag_assets.embedding import Embedder, load_embedder_here

    with tempfile.TemporaryDirectory(prefix="model-load-") as cache:
        load_embedder_here(default_model(), "onnx", "cpu", 64, 0, cache)  # the export and the trace, untimed
        traced = Embedder(default_model(), "cpu", cache=Path(cache))
        loads: dict = {way: [] for way in ("transformers", "trace", "onnx")}
        for _ in range(args.runs):
            for way in loads:
                loads[way].append(load_once(way, cache))
        eager = Embedder(default_model(), "cpu")
        texts = sample_texts(args.texts)
        encode: dict = {"transformers": [], "trace": []}
        for _ in range(2):
            for way, embedder in (("transformers", eager), ("trace", traced)):
                started = time.perf_counter()
                vectors = embedder.encode(texts)
                encode[way].append(round(time.perf_counter() - started, 2))
                if way == "transformers":
                    reference = vectors
        difference = float(abs(vectors - reference).max())
    report = {
        "load_median": {way: {k: round(statistics.median(r[k] for r in runs), 2) for k in ("seconds", "cpu")}
                        for way, runs in loads.items()},
        "transformers_imported": {way: runs[0]["transformers_imported"] for way, runs in loads.items()},
        "encode_seconds": encode, "texts": len(texts), "trace_max_difference": difference,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
