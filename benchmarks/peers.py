"""rag_assets against LlamaIndex and LangChain: full build, no-change run and edit, side by side.

    pip install -e '.[peers]'              # LlamaIndex and LangChain, pinned (pyproject.toml)
    apt-get install postgresql-doc-15      # the corpus: PostgreSQL's HTML documentation
    python benchmarks/peers.py --pages 200 --shards 4 --rounds 3
    python benchmarks/peers.py --pages 8 --shards 4 --rounds 1     # a quick check

1. Corpus: `--pages` pages of /usr/share/doc/postgresql-doc-15/html (sorted names, bookindex.html and
   pages under 2 KB left out, evenly spaced), copied round-robin into `--shards` shard folders.
2. The same work for all three: the text rag_assets extracts (its own HTML parser, in the peers' process
   too), the packaged all-MiniLM-L6-v2 on the CPU, 200-token chunks with 32 overlap counted by the model's
   tokenizer, batches of 64, a local Qdrant. rag_assets is `rag-assets sync --json`; LlamaIndex is an
   `IngestionPipeline` (SentenceSplitter, HuggingFaceEmbedding, UPSERTS_AND_DELETE docstore, persisted
   between runs); LangChain is `index(..., cleanup="incremental")` with a SQLRecordManager
   (RecursiveCharacterTextSplitter, HuggingFaceEmbeddings).
3. Phases, each one fresh process timed from outside (interpreter start, imports and model load
   included, as a cron job or CLI call pays them): `full` from empty state, `nochange` with nothing
   changed, `edit` after one sentence is inserted into the middle paragraph of one page per shard.
4. Raw encode: rag_assets' chunks of the full build (its `chunks` table) encoded by
   `SentenceTransformer.encode` at each `--batch-sizes` (the best is the baseline: 8 or 16 on 2 cores) and by the project's
   `Embedder.encode` (torch) and `OnnxEmbedder.encode` (RAG_EMBED_BACKEND=onnx), interleaved, in one
   more process; with the min cosine of each against SentenceTransformer's vectors. rag_assets runs
   three times: with each backend and its default RAG_SYNC_WORKERS (2 forked worker processes on 2+ cores),
   and with onnx and RAG_SYNC_WORKERS=1 (every shard run in the CLI's process, as before that setting);
   the ONNX export (once per model and machine) is made before the rounds.
5. `--rounds` rounds, the systems in a rotated order each round; medians are reported.
6. `--systems` runs some of the columns only, and `--no-encode` skips the raw encode (and the ratios that
   need it): a shorter run for the no-change and edit ratios, e.g.
   `--systems rag_assets_onnx,rag_assets,llamaindex --no-encode`.

Prints one JSON object (every round's figures, medians, chunks embedded, ratios) and a table on stderr.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from bench_env import write_instance_config

DOCS = Path("/usr/share/doc/postgresql-doc-15/html")
SYSTEMS = ("rag_assets", "rag_assets_onnx", "rag_assets_onnx_1w", "llamaindex", "langchain")
NAMES = {"rag_assets": "rag_assets", "rag_assets_onnx": "rag_assets onnx", "rag_assets_onnx_1w": "onnx, 1 worker",
         "llamaindex": "LlamaIndex", "langchain": "LangChain"}
BACKENDS = {"rag_assets": "torch", "rag_assets_onnx": "onnx", "rag_assets_onnx_1w": "onnx"}  # RAG_EMBED_BACKEND of each rag_assets column
SYNC_WORKERS = {"rag_assets_onnx_1w": 1}  # RAG_SYNC_WORKERS where not the default (2 on 2+ cores)
PHASES = ("full", "nochange", "edit")
ENCODE_STATE = "rag_assets"  # the column whose full build's chunks the raw encode reads (main: the first rag_assets column of --systems)
CHUNK_TOKENS, CHUNK_OVERLAP, BATCH_SIZE = 200, 32, 64
COLLECTION = "peers"
EDIT = b" This sentence was inserted by the benchmark, so the middle of the page changed."
PACKAGES = ("torch", "sentence-transformers", "transformers", "qdrant-client", "llama-index-core",
            "llama-index-embeddings-huggingface", "llama-index-vector-stores-qdrant", "langchain-core",
            "langchain-classic", "langchain-text-splitters", "langchain-huggingface", "langchain-qdrant")


# --- the corpus ----------------------------------------------------------------------------------

def pick_pages(n: int) -> list[Path]:
    if not DOCS.is_dir():
        sys.exit(f"{DOCS} is missing: apt-get install postgresql-doc-15")
    pages = [p for p in sorted(DOCS.glob("*.html")) if p.name != "bookindex.html" and p.stat().st_size >= 2048]
    if n > len(pages):
        sys.exit(f"--pages {n}: the corpus has {len(pages)} pages")
    return [pages[i * len(pages) // n] for i in range(n)]


def build_src(src: Path, pages: list[Path], shards: int) -> None:
    shutil.rmtree(src, ignore_errors=True)
    for i, page in enumerate(pages):
        folder = src / f"shard-{i % shards}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, folder / page.name)


def edit_shards(src: Path) -> list[str]:
    """In each shard, the page of median size (of those with paragraphs) gets EDIT at the end of its
    middle paragraph; returns their doc ids."""
    edited = []
    for shard in sorted(src.iterdir()):
        pages = sorted((p.stat().st_size, p.name, p) for p in shard.glob("*.html") if b"</p>" in p.read_bytes())
        page = pages[len(pages) // 2][2]
        html = page.read_bytes()
        ends = [m.start() for m in re.finditer(rb"</p>", html)]
        middle = ends[len(ends) // 2]
        page.write_bytes(html[:middle] + EDIT + html[middle:])
        edited.append(page.relative_to(src).as_posix())
    return edited


def parsed_documents(src: Path) -> list:
    """rag_assets' own documents of the source tree: doc_id (path relative to src), title, text."""
    from rag_assets.parsing import Document, parse_file

    return [doc for path in sorted(src.rglob("*.html"))
            for doc in parse_file(path.relative_to(src).as_posix(), path.read_bytes()) if isinstance(doc, Document)]


# --- the workers: one phase of one peer, or the raw encode, in a fresh process --------------------

def hf_tokenizer():
    from transformers import AutoTokenizer

    from rag_assets.config import default_model

    return AutoTokenizer.from_pretrained(default_model())


def llamaindex_worker(state: Path, src: Path) -> dict:
    from llama_index.core import Document
    from llama_index.core.ingestion import DocstoreStrategy, IngestionPipeline
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.storage.docstore import SimpleDocumentStore
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.qdrant import QdrantVectorStore
    from qdrant_client import QdrantClient

    from rag_assets.config import default_model

    tokenizer = hf_tokenizer()
    splitter = SentenceSplitter(chunk_size=CHUNK_TOKENS, chunk_overlap=CHUNK_OVERLAP,
                                tokenizer=functools.partial(tokenizer.encode, add_special_tokens=False))
    embed_model = HuggingFaceEmbedding(model_name=default_model(), device="cpu", embed_batch_size=BATCH_SIZE)
    client = QdrantClient(path=str(state / "qdrant"))
    pipeline = IngestionPipeline(
        transformations=[splitter, embed_model], docstore=SimpleDocumentStore(),
        vector_store=QdrantVectorStore(collection_name=COLLECTION, client=client),
        docstore_strategy=DocstoreStrategy.UPSERTS_AND_DELETE,
    )
    persist_dir = str(state / "pipeline")
    if Path(persist_dir).exists():
        pipeline.load(persist_dir)
    # The title is payload, as in rag_assets: kept out of the embedded text and of the chunk size.
    documents = [Document(id_=d.doc_id, text=d.text, metadata={"title": d.title},
                          excluded_embed_metadata_keys=["title"], excluded_llm_metadata_keys=["title"])
                 for d in parsed_documents(src)]
    nodes = pipeline.run(documents=documents)
    pipeline.persist(persist_dir)
    client.close()
    return {"documents": len(documents), "embedded": len(nodes),
            "documents_embedded": sorted({n.ref_doc_id for n in nodes})}


def langchain_worker(state: Path, src: Path) -> dict:
    from langchain_classic.indexes import SQLRecordManager
    from langchain_core.documents import Document
    from langchain_core.indexing import index
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_qdrant import QdrantVectorStore
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from qdrant_client import QdrantClient, models

    from rag_assets.config import default_model

    splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(
        hf_tokenizer(), chunk_size=CHUNK_TOKENS, chunk_overlap=CHUNK_OVERLAP)
    embeddings = HuggingFaceEmbeddings(model_name=default_model(), model_kwargs={"device": "cpu"},
                                       encode_kwargs={"batch_size": BATCH_SIZE, "normalize_embeddings": True})
    state.mkdir(parents=True, exist_ok=True)
    first_run = not (state / "records.db").exists()
    records = SQLRecordManager(f"qdrant/{COLLECTION}", db_url=f"sqlite:///{state / 'records.db'}")
    client = QdrantClient(path=str(state / "qdrant"))
    if first_run:
        records.create_schema()
        dim = len(embeddings.embed_query("dimension"))
        client.create_collection(COLLECTION, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE))
    store = QdrantVectorStore(client=client, collection_name=COLLECTION, embedding=embeddings)
    documents = [Document(page_content=d.text, metadata={"source": d.doc_id, "title": d.title})
                 for d in parsed_documents(src)]
    chunks = splitter.split_documents(documents)
    result = index(chunks, records, store, cleanup="incremental", source_id_key="source")
    client.close()
    return {"documents": len(documents), "chunks": len(chunks),
            "embedded": result["num_added"] + result["num_updated"], **result}


def encode_worker(as_of_ms: int, batch_sizes: list[int]) -> dict:
    """rag_assets' chunks as of `as_of_ms` (the end of its full build), encoded by the raw model at each
    batch size and by the project's two embedders, interleaved."""
    from sentence_transformers import SentenceTransformer

    from rag_assets.config import Settings, default_model
    from rag_assets.embedding import Embedder, OnnxEmbedder, resolve_model
    from rag_assets.tables import CHUNKS, Lakehouse

    settings = Settings.from_env()
    table = Lakehouse(settings.iceberg_catalog, settings.iceberg_properties, settings.iceberg_namespace).table(CHUNKS)
    snapshot = table.snapshot_as_of_timestamp(as_of_ms)
    rows = table.scan(selected_fields=("text", "token_count"), snapshot_id=snapshot.snapshot_id).to_arrow()
    texts = rows["text"].to_pylist()

    model = SentenceTransformer(default_model(), device="cpu")
    encoders = {"embedder": Embedder(default_model(), "cpu").encode,
                "onnx": OnnxEmbedder(resolve_model(default_model(), "onnx"), settings.model_cache).encode}
    for encode in (*encoders.values(), functools.partial(model.encode, batch_size=64)):
        encode(texts[:64])  # warm-up
    # st(bs1), embedder, onnx, st(bs2), onnx, embedder, st(bs3), ...: each embedder next to every ST run
    sequence = []
    for i, bs in enumerate(batch_sizes):
        sequence.append(("st", bs))
        if i < len(batch_sizes) - 1:
            sequence += [(name, None) for name in (encoders if i % 2 == 0 else reversed(encoders))]
    seconds: dict = {"st": {}, "embedder": [], "onnx": []}
    vectors = {}
    for name, bs in sequence:
        started = time.perf_counter()
        if name == "st":
            vectors["st"] = model.encode(texts, batch_size=bs, normalize_embeddings=True)
            seconds["st"][bs] = round(time.perf_counter() - started, 3)
        else:
            vectors[name] = encoders[name](texts)
            seconds[name].append(round(time.perf_counter() - started, 3))
    return {"chunks": len(texts), "tokens": sum(rows["token_count"].to_pylist()), "st_seconds": seconds["st"],
            **{f"{name}_seconds": statistics.median(seconds[name]) for name in encoders},
            **{f"{name}_runs": seconds[name] for name in encoders},
            **{f"{name}_min_cosine": round(float((vectors[name] * vectors["st"]).sum(axis=1).min()), 6) for name in encoders}}


# --- the parent: rounds of timed processes --------------------------------------------------------

def run_json(cmd: list[str], env: dict) -> tuple[float, dict]:
    """Wall seconds of the process, and the JSON it printed."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return round(seconds, 2), json.loads(proc.stdout)


def rag_env(state: Path, src: Path, backend: str = "torch") -> dict:
    """rag_assets' settings for this state folder (as benchmarks/bench_env.py makes them); the model
    cache (ONNX exports) is shared by every state folder."""
    write_instance_config(state / "dagster")
    return {**os.environ, "RAG_HOME": str(state / "rag"), "RAG_SOURCE": str(src), "DAGSTER_HOME": str(state / "dagster"),
            "RAG_EMBED_DEVICE": "cpu", "RAG_EMBED_BATCH_SIZE": str(BATCH_SIZE), "RAG_EMBED_BACKEND": backend,
            "RAG_MODEL_CACHE": str(state.parent.parent / "models"),
            "RAG_CHUNK_TOKENS": str(CHUNK_TOKENS), "RAG_CHUNK_OVERLAP": str(CHUNK_OVERLAP),
            "RAG_EVAL_AFTER_SYNC": "false"}  # the peers measure nothing after a sync: neither does rag_assets here


def run_phase(system: str, state: Path, src: Path) -> dict:
    if system in BACKENDS:
        rag_assets_cli = str(Path(sys.executable).parent / "rag-assets")
        env = rag_env(state, src, BACKENDS[system])
        env.pop("RAG_SYNC_WORKERS", None)
        if system in SYNC_WORKERS:
            env["RAG_SYNC_WORKERS"] = str(SYNC_WORKERS[system])
        seconds, report = run_json([rag_assets_cli, "sync", "--json"], env)
        totals = report["totals"]
        assert totals["failed"] == 0, report
        report = {k: totals[k] for k in ("documents", "chunks", "embedded", "upserted", "deleted")}
    else:
        seconds, report = run_json([sys.executable, __file__, "--worker", system, "--state", str(state), "--src", str(src)],
                                   dict(os.environ))
    return {"seconds": seconds, **report}


def run_round(r: int, tmp: Path, pages: list[Path], shards: int, batch_sizes: list[int] | None) -> dict:
    src = tmp / "src"
    order = SYSTEMS[r % len(SYSTEMS):] + SYSTEMS[: r % len(SYSTEMS)]
    result: dict = {"order": list(order)}
    for system in order:
        state = tmp / f"round-{r}" / system
        build_src(src, pages, shards)
        result[system] = {}
        for phase in PHASES:
            if phase == "edit":
                result["edited"] = edit_shards(src)
            result[system][phase] = run_phase(system, state, src)
            if (system, phase) == (ENCODE_STATE, "full"):
                full_built_ms = int(time.time() * 1000)
            print(f"round {r + 1} {NAMES[system]} {phase}: {result[system][phase]['seconds']}s, "
                  f"embedded {result[system][phase]['embedded']}", file=sys.stderr)
    if batch_sizes:  # the raw encode reads the chunks of this round's first rag_assets full build
        _, result["encode"] = run_json([sys.executable, __file__, "--worker", "encode", "--as-of", str(full_built_ms),
                                        "--batch-sizes", ",".join(map(str, batch_sizes))],
                                       rag_env(tmp / f"round-{r}" / ENCODE_STATE, src))
    return result


def checks(rounds: list[dict]) -> dict[str, bool]:
    """What each run must have embedded: something on a full build, nothing on no change, and on an edit
    something (LlamaIndex: exactly the edited documents' nodes)."""
    out = {}
    for system in SYSTEMS:
        out[f"{system}: full embeds"] = all(r[system]["full"]["embedded"] > 0 for r in rounds)
        out[f"{system}: no change embeds nothing"] = all(r[system]["nochange"]["embedded"] == 0 for r in rounds)
        out[f"{system}: edit embeds"] = all(r[system]["edit"]["embedded"] > 0 for r in rounds)
    if "llamaindex" in SYSTEMS:
        out["llamaindex: edit embeds only the edited documents"] = all(
            r["llamaindex"]["edit"]["documents_embedded"] == sorted(r["edited"]) for r in rounds)
    return out


def summarize(rounds: list[dict], batch_sizes: list[int] | None) -> dict:
    seconds = {s: {p: statistics.median(r[s][p]["seconds"] for r in rounds) for p in PHASES} for s in SYSTEMS}
    embedded = {s: {p: rounds[0][s][p]["embedded"] for p in PHASES} for s in SYSTEMS}
    ours, peers = [s for s in SYSTEMS if s in BACKENDS], [s for s in SYSTEMS if s not in BACKENDS]
    ratios = {}
    if peers:
        peer_edit = min(peers, key=lambda s: seconds[s]["edit"])
        peer_nochange = min(peers, key=lambda s: seconds[s]["nochange"])
        ratios |= {f"{s} edit / {peer_edit} edit": round(seconds[s]["edit"] / seconds[peer_edit]["edit"], 2) for s in ours}
        ratios |= {f"{peer_nochange} no change / {s} no change": round(seconds[peer_nochange]["nochange"] / seconds[s]["nochange"], 2)
                   for s in ours}
    out = {"median_seconds": seconds, "embedded": embedded, "ratios": ratios, "checks": checks(rounds)}
    if not batch_sizes:
        return out
    st = {bs: statistics.median(r["encode"]["st_seconds"][str(bs)] for r in rounds) for bs in batch_sizes}
    best = min(st, key=st.get)
    encode = {"chunks": rounds[0]["encode"]["chunks"], "tokens": rounds[0]["encode"]["tokens"], "st_seconds": st,
              "best_batch_size": best, "raw_encode_seconds": st[best],
              **{f"{e}_{k}": statistics.median(r["encode"][f"{e}_{k}"] for r in rounds)
                 for e in ("embedder", "onnx") for k in ("seconds", "min_cosine")}}
    ratios |= {
        **{f"{s} full / raw encode": round(seconds[s]["full"] / st[best], 2) for s in SYSTEMS},
        "Embedder.encode / best ST encode": round(encode["embedder_seconds"] / st[best], 3),
        "OnnxEmbedder.encode / best ST encode": round(encode["onnx_seconds"] / st[best], 3),
    }
    return {**out, "encode": encode, "ratios": ratios}


def print_table(out: dict) -> None:
    seconds, embedded, encode = out["median_seconds"], out["embedded"], out.get("encode")
    err = functools.partial(print, file=sys.stderr)
    err(f"\npostgresql-doc-15: {out['pages']} pages, {out['shards']} shards, {out['rounds']} round(s), {out['cpu']}; "
        f"median wall seconds of a fresh process (chunks embedded)")
    err(f"{'':<12}" + "".join(f"{NAMES[s]:>20}" for s in SYSTEMS))
    for phase, label in zip(PHASES, ("full build", "no change", "edit")):
        err(f"{label:<12}" + "".join(f"{f'{seconds[s][phase]:.1f}s ({embedded[s][phase]})':>20}" for s in SYSTEMS))
    if encode:
        err(f"raw encode: {encode['raw_encode_seconds']:.1f}s (SentenceTransformer.encode, batch {encode['best_batch_size']}, "
            f"{encode['chunks']} chunks, {encode['tokens']} tokens); Embedder.encode {encode['embedder_seconds']:.1f}s, "
            f"OnnxEmbedder.encode {encode['onnx_seconds']:.1f}s; min cosine {encode['embedder_min_cosine']}, {encode['onnx_min_cosine']}")
    for name, ratio in out["ratios"].items():
        err(f"  {name}: {ratio}")
    for name, ok in out["checks"].items():
        if not ok:
            err(f"  CHECK FAILED: {name}")


def export_onnx_once(cache: Path) -> None:
    """The ONNX export a deployment makes once per model (into RAG_MODEL_CACHE), made before the timed runs."""
    code = ("from pathlib import Path; from rag_assets.config import default_model; "
            "from rag_assets.embedding import OnnxEmbedder, resolve_model; "
            f"OnnxEmbedder(resolve_model(default_model(), 'onnx'), Path({str(cache)!r}))")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def main() -> None:
    global SYSTEMS, ENCODE_STATE
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="8,16,64", help="SentenceTransformer.encode batch sizes of the raw encode")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="the columns to run, of " + ",".join(SYSTEMS))
    parser.add_argument("--no-encode", action="store_true", help="skip the raw encode (and the ratios to it)")
    parser.add_argument("--worker", choices=("llamaindex", "langchain", "encode"), help=argparse.SUPPRESS)
    parser.add_argument("--state", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--src", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--as-of", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    SYSTEMS = tuple(s for s in args.systems.split(",") if s)
    if unknown := set(SYSTEMS) - set(NAMES):
        sys.exit(f"--systems: unknown {sorted(unknown)}")
    if not args.no_encode:
        ENCODE_STATE = next((s for s in SYSTEMS if s in BACKENDS), None)
        if ENCODE_STATE is None:
            sys.exit("the raw encode reads a rag_assets column's chunks: add one to --systems, or pass --no-encode")

    if args.worker == "encode":
        print(json.dumps(encode_worker(args.as_of, batch_sizes)))
        return
    if args.worker:
        worker = llamaindex_worker if args.worker == "llamaindex" else langchain_worker
        print(json.dumps(worker(args.state, args.src)))
        return

    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")  # the packaged model only: no download
    pages = pick_pages(args.pages)
    tmp = Path(tempfile.mkdtemp(prefix="rag-peers-"))
    export_onnx_once(tmp / "models")
    rounds = [run_round(r, tmp, pages, args.shards, None if args.no_encode else batch_sizes) for r in range(args.rounds)]
    out = {"pages": args.pages, "shards": args.shards, "rounds": args.rounds, "cpu": f"cpu ({os.cpu_count()} cores)",
           "versions": {p: version(p) for p in PACKAGES}, **summarize(rounds, None if args.no_encode else batch_sizes), "per_round": rounds}
    print(json.dumps(out))
    print_table(out)
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
