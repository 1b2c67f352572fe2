"""Incremental sync with 1% of documents changed, against a full build of the same corpus.

    python benchmarks/incremental.py --docs 2000 --shards 10 --changed 0.01

Builds a corpus of real text (paragraphs of the standard library's pydoc pages, no download), runs
`run_sync` once from empty state (the full build), edits `--changed` of the documents (a sentence
appended to each, in documents spread over all shards), and runs `run_sync` again (the incremental
sync). Both are the same code path as the sensor. Prints wall time and chunks sent to the model for
each, and the ratio.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from bench_env import temp_rag_env


def paragraphs() -> list[str]:
    """Real text: every paragraph of the stdlib pydoc pages the demo uses, and more modules."""
    from rag_assets.demo import DEMO_SHARDS, module_markdown

    extra = ["collections", "itertools", "functools", "typing", "logging", "argparse", "datetime", "inspect",
             "dataclasses", "enum", "contextlib", "heapq", "bisect", "array", "struct", "hashlib", "hmac", "secrets",
             "uuid", "xml.etree.ElementTree", "unittest", "doctest", "pdb", "timeit", "traceback", "warnings"]
    paras = []
    for name in [m for mods in DEMO_SHARDS.values() for m in mods] + extra:
        text = module_markdown(name) or ""
        paras.extend(p.strip() for p in text.split("\n\n") if 80 <= len(p.strip()) <= 1500)
    return sorted(set(paras))


def build_corpus(root: Path, docs: int, shards: int, seed: int = 7) -> list[Path]:
    rng = random.Random(seed)
    paras = paragraphs()
    paths = []
    for i in range(docs):
        folder = root / f"shard-{i % shards:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        body = "\n\n".join(rng.sample(paras, 4))
        path = folder / f"doc-{i:05d}.md"
        path.write_text(f"# Document {i}\n\n{body}\n")
        paths.append(path)
    return paths


def timed_sync(label: str) -> dict:
    import dagster as dg

    from rag_assets.defs.resources import build_resources
    from rag_assets.sync import run_sync

    started = time.perf_counter()
    report = run_sync(dg.DagsterInstance.get(), build_resources()).as_json()
    seconds = time.perf_counter() - started
    totals = report["totals"]
    assert totals["failed"] == 0, report
    statuses = {}
    for row in report["shards"].values():
        statuses[row["status"]] = statuses.get(row["status"], 0) + 1
    print(f"{label}: {seconds:.1f}s, shards {statuses}, chunks {totals['chunks']}, embedded {totals['embedded']}, "
          f"upserted {totals['upserted']}, deleted {totals['deleted']}", file=sys.stderr)
    return {"seconds": round(seconds, 2), "embedded": totals["embedded"], "upserted": totals["upserted"],
            "chunks": totals["chunks"], "shards": statuses}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--changed", type=float, default=0.01, help="fraction of documents edited")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    args = parser.parse_args()

    tmp = temp_rag_env("rag-incremental-")
    paths = build_corpus(tmp / "src", args.docs, args.shards)

    full = timed_sync("full build")
    rng = random.Random(11)
    edited = rng.sample(paths, max(1, round(args.docs * args.changed)))
    for path in edited:
        path.write_text(path.read_text() + f"\nRevised: {path.stem} now also covers error handling.\n")
    incremental = timed_sync(f"incremental ({len(edited)} documents edited)")
    result = {
        "docs": args.docs, "shards": args.shards, "edited_docs": len(edited),
        "full": full, "incremental": incremental,
        "time_ratio": round(incremental["seconds"] / full["seconds"], 4),
        "embedded_ratio": round(incremental["embedded"] / max(full["embedded"], 1), 4),
    }
    print(json.dumps(result))
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
