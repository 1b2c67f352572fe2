"""Peak memory of one shard run as the shard grows, against the fixed cost of code and model.

    python benchmarks/memory.py --docs 300,3000
    python benchmarks/memory.py --small-model --docs 2000,20000   # the pipeline's own memory, bigger shards

For each size, a fresh temp environment holds ONE shard of that many generated Markdown documents
(real text: 3-7 stdlib pydoc paragraphs per document, each under a heading naming the document, ~1.7 KB
and ~3.6 chunks per document; chunks are distinct except where the chunker splits a long paragraph the
same way twice), and a fresh child process runs `run_sync` (the sensor's code path: the shard's four
assets through Dagster, in process). Its peak RSS is the child's `ru_maxrss` (os.wait4); the parent
also polls /proc/<child>/status every 20 ms, and the child reports Dagster's step start/end times, so
each step's peak RSS is known too. A baseline child in the same run only imports the code, opens the
instance and catalog, loads the tokenizer and model and embeds 128 chunk-sized texts: the fixed cost.
Prints one JSON line: per size docs, chunks, peak_rss_mb, seconds, per-step peaks, and the growth
ratio of (peak - baseline) between the first and last size. Results: benchmarks/RESULTS.md, "Memory".
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench_env import temp_rag_env

HERE = Path(__file__).resolve().parent
SHARD = "shard-000"
STEPS = ("raw_documents", "chunks", "embeddings", "vector_index")


# ---------------------------------------------------------------------------------------------------
# The corpus


def build_shard(root: Path, docs: int, sections: int, seed: int = 7) -> int:
    """`docs` Markdown files in one shard: a title, then `sections` +- 2 sections of one real paragraph each.
    Section headings name the document, so no two chunks share a text (all are embedded). Returns bytes."""
    from incremental import paragraphs

    rng = random.Random(seed)
    paras = paragraphs()
    folder = root / SHARD
    total = 0
    for i in range(docs):
        sub = folder / f"part-{i // 1000:02d}"  # a few sub-folders, as real shards have
        sub.mkdir(parents=True, exist_ok=True)
        body = "\n\n".join(f"## Document {i}, section {k + 1}\n\n{p}" for k, p in enumerate(rng.sample(paras, rng.randint(max(1, sections - 2), sections + 2))))
        text = f"# Document {i}\n\nGenerated for the memory benchmark.\n\n{body}\n"
        (sub / f"doc-{i:05d}.md").write_text(text)
        total += len(text.encode())
    return total


def build_small_model(folder: Path) -> Path:
    """A 1-layer, 384-d sentence-transformers model with random weights and the default model's tokenizer
    (`--small-model`): the same vector size, tables and chunking as the real model, but ~10x cheaper to
    run and with activations of a few MB, so that what a shard run holds besides the model shows, and
    shards 10x bigger can be measured in minutes. Its vectors mean nothing; only memory is measured."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from rag_assets.config import default_model

    tokenizer = AutoTokenizer.from_pretrained(default_model())
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=384, num_hidden_layers=1, num_attention_heads=6,
                        intermediate_size=384, max_position_embeddings=512)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder / "hf")
    tokenizer.save_pretrained(folder / "hf")
    path = folder / "small-384d-1layer"
    modules = [models.Transformer(str(folder / "hf"), max_seq_length=256), models.Pooling(384, "mean"), models.Normalize()]
    SentenceTransformer(modules=modules).save(str(path))
    return path


# ---------------------------------------------------------------------------------------------------
# Children (run with --child; they write one JSON object to --out)


def child_baseline() -> dict:
    """The fixed cost: the code imported, resources built, Dagster instance open, model + tokenizer loaded, a few texts embedded."""
    import dagster as dg

    import rag_assets.definitions  # noqa: F401  (everything a run imports)
    from rag_assets.defs.resources import build_resources

    instance = dg.DagsterInstance.get()
    resources = build_resources()
    model = resources["model"]
    model.chunker().split("# Title\n\nA short paragraph to split.")
    # A few full batches of chunk-sized texts (~200 tokens): the activations of one batch are part of
    # the fixed cost (they depend on the token budget per batch, not on the shard).
    sentence = "Each shard is synced by one run that reads its documents, splits them and embeds the chunks. "
    model.embedder().encode([f"{i}: " + sentence * 9 for i in range(128)])
    resources["iceberg"].lakehouse()
    instance.get_runs(limit=1)
    return {}


def child_sync() -> dict:
    import dagster as dg
    from dagster._core.events import DagsterEventType

    from rag_assets.defs.resources import build_resources
    from rag_assets.sync import run_sync

    instance = dg.DagsterInstance.get()
    marks = {"imported": time.time()}
    report = run_sync(instance, build_resources()).as_json()
    marks["synced"] = time.time()
    steps: dict[str, dict[str, float]] = {}
    for run in instance.get_runs():
        for record in instance.get_records_for_run(run.run_id).records:
            entry = record.event_log_entry
            ev = entry.dagster_event
            if ev is None or not entry.step_key:
                continue
            if ev.event_type == DagsterEventType.STEP_START:
                steps.setdefault(entry.step_key, {})["start"] = entry.timestamp
            elif ev.event_type in (DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE):
                steps.setdefault(entry.step_key, {})["end"] = entry.timestamp
    try:
        import pyarrow as pa

        arrow_peak = pa.default_memory_pool().max_memory()
    except Exception:  # noqa: BLE001 - diagnostics only
        arrow_peak = None
    return {"report": report, "steps": steps, "marks": marks, "arrow_pool_peak_mb": arrow_peak and round(arrow_peak / 2**20, 1)}


# ---------------------------------------------------------------------------------------------------
# The parent: run a child, poll its RSS, wait for its rusage


def rss_fields(pid: int) -> dict[str, int] | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
            out[key] = int(value.split()[0])  # kB
    return out


def run_child(kind: str, tmp: Path, interval: float) -> dict:
    out = tmp / f"child-{kind}.json"
    log = tmp / f"child-{kind}.log"
    cmd = [sys.executable, str(HERE / "memory.py"), "--child", kind, "--out", str(out)]
    samples: list[tuple[float, dict[str, int]]] = []
    started = time.perf_counter()
    with log.open("w") as log_fh:
        proc = subprocess.Popen(cmd, stdout=log_fh, stderr=subprocess.STDOUT, cwd=HERE.parent)
        done = threading.Event()

        def poll() -> None:
            while not done.is_set():
                if (fields := rss_fields(proc.pid)) and "VmRSS" in fields:
                    samples.append((time.time(), fields))
                time.sleep(interval)

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, not the sum of all children
        done.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} failed ({proc.returncode}); see {log}:\n{log.read_text()[-4000:]}")
    result = json.loads(out.read_text())
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: kB
    result["seconds"] = round(seconds, 1)
    result["samples"] = samples
    return result


def step_peaks(result: dict) -> dict[str, dict[str, float]]:
    """Per step: peak and end RSS (MB) polled while it ran, and the peak anonymous part."""
    peaks = {}
    for key, window in sorted(result["steps"].items(), key=lambda kv: kv[1].get("start", 0)):
        inside = [f for t, f in result["samples"] if window.get("start", 0) <= t <= window.get("end", float("inf"))]
        if inside:
            peaks[key] = {
                "peak_mb": round(max(f["VmRSS"] for f in inside) / 1024, 1),
                "peak_anon_mb": round(max(f.get("RssAnon", 0) for f in inside) / 1024, 1),
                "end_mb": round(inside[-1]["VmRSS"] / 1024, 1),
                "seconds": round(window.get("end", 0) - window.get("start", 0), 1),
            }
    return peaks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", default="300,3000", help="shard sizes in documents, comma-separated")
    parser.add_argument("--sections", type=int, default=5, help="mean paragraphs (each under its own heading) per document")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between /proc polls")
    parser.add_argument("--keep", action="store_true", help="keep the temp folders")
    parser.add_argument("--small-model", action="store_true", help="a 1-layer random 384-d model instead of the real one (see build_small_model)")
    parser.add_argument("--child", choices=("baseline", "sync"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        os.environ.setdefault("RAG_EMBED_DEVICE", "cpu")
        result = child_baseline() if args.child == "baseline" else child_sync()
        Path(args.out).write_text(json.dumps(result))
        return

    os.environ["RAG_EMBED_DEVICE"] = "cpu"
    sizes = [int(s) for s in args.docs.split(",")]
    temps = []
    tmp = temp_rag_env("rag-memory-base-")
    temps.append(tmp)
    if args.small_model:
        os.environ["RAG_EMBED_MODEL"] = str(build_small_model(tmp / "model"))  # the children inherit it
    base = run_child("baseline", tmp, args.interval)
    print(f"baseline (imports + model + tokenizer): {base['peak_rss_mb']} MB in {base['seconds']} s", file=sys.stderr)

    runs = []
    for docs in sizes:
        tmp = temp_rag_env(f"rag-memory-{docs}-")
        temps.append(tmp)
        source_bytes = build_shard(tmp / "src", docs, args.sections)
        res = run_child("sync", tmp, args.interval)
        shard = res["report"]["shards"][SHARD]
        assert shard["status"] == "new" and res["report"]["totals"]["failed"] == 0, res["report"]
        assert shard["documents"] == docs, shard
        row = {
            "docs": docs,
            "source_mb": round(source_bytes / 2**20, 2),
            "chunks": shard["chunks"],
            "embedded": shard["embedded"],
            "peak_rss_mb": res["peak_rss_mb"],
            "over_baseline_mb": round(res["peak_rss_mb"] - base["peak_rss_mb"], 1),
            "seconds": res["seconds"],
            "sync_seconds": shard["seconds"],
            "arrow_pool_peak_mb": res["arrow_pool_peak_mb"],
            "steps": step_peaks(res),
        }
        runs.append(row)
        print(f"{docs} docs ({row['source_mb']} MB, {row['chunks']} chunks): peak {row['peak_rss_mb']} MB "
              f"(+{row['over_baseline_mb']} over baseline) in {row['seconds']} s; steps "
              + ", ".join(f"{k} {v['peak_mb']}" for k, v in row["steps"].items()), file=sys.stderr)

    result = {"model": "small" if args.small_model else "default", "baseline_mb": base["peak_rss_mb"], "baseline_seconds": base["seconds"], "sizes": runs}
    if len(runs) >= 2:
        first, last = runs[0], runs[-1]
        result["docs_ratio"] = round(last["docs"] / first["docs"], 2)
        result["growth_ratio_over_baseline"] = round(last["over_baseline_mb"] / max(first["over_baseline_mb"], 0.1), 2)
        result["mb_per_1000_docs"] = round(
            (last["peak_rss_mb"] - first["peak_rss_mb"]) / (last["docs"] - first["docs"]) * 1000, 1
        )
    print(json.dumps(result))
    if not args.keep:
        for t in temps:
            shutil.rmtree(t, ignore_errors=True)


if __name__ == "__main__":
    main()
