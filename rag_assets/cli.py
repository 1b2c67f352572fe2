"""`rag-assets`: demo, sync, search, serve, status, eval, migrate, reconcile, maintain, rollback and repair from the command line."""

from __future__ import annotations

import atexit
import json
import os
import sys
import threading
import traceback
from pathlib import Path

import click

from rag_assets.config import SEARCH_MODES, Settings
from rag_assets.search import MAX_K


def _dagster_home(settings: Settings) -> Path:
    if not os.environ.get("DAGSTER_HOME"):
        os.environ["DAGSTER_HOME"] = str(settings.home / "dagster")
    home = Path(os.environ["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    return home


def _home_lock(settings: Settings, name: str):
    """A lock file in the Dagster home (filelock: flock on POSIX), shared by every `rag-assets` process of it."""
    from filelock import FileLock

    return FileLock(_dagster_home(settings) / f".rag-{name}.lock")


def _instance(settings: Settings):
    import dagster as dg

    # Two commands starting on a fresh home would both create the SQLite storages and run their
    # migrations (seen: two alembic heads, every later command failing): one creates, the other waits.
    with _home_lock(settings, "instance"):
        return dg.DagsterInstance.get()


class _Group(click.Group):
    """Expected operational errors (a full disk, a damaged table) become one clear line and exit 1, not a traceback."""

    def invoke(self, ctx):
        from rag_assets.index import DiskFull

        try:
            return super().invoke(ctx)
        except Exception as exc:
            # A damaged table can only be met by a command that imported the tables (not `search`, which
            # must not pay for pyiceberg's import).
            tables = sys.modules.get("rag_assets.tables")
            if isinstance(exc, (DiskFull, tables.CorruptTable) if tables else DiskFull):
                raise click.ClickException(str(exc)) from exc
            raise


@click.group(cls=_Group)
def main() -> None:
    """Keep a vector index of a sharded document collection in sync (see README.md)."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
@click.option("--allow-deletes", is_flag=True, help="Let through deletions the deletion guard holds (RAG_MAX_DELETE_FRACTION).")
def sync(as_json: bool, allow_deletes: bool) -> None:
    """Do what the sensor does, once, in-process: materialize new and changed shards, remove vanished ones.
    Exits 1 when a shard failed or was held by the deletion guard."""
    from rag_assets.embedding import embedder_options
    from rag_assets.model_process import model_process

    settings = Settings.from_env()
    # Forked first, while this process is single-threaded; it loads the model once the plan has shards to embed.
    with model_process(embedder_options(**settings.model_options())):
        report = _sync(settings, quiet=as_json, allow_deletes=allow_deletes)
        data = report.as_json()
        if settings.eval_after_sync and _index_changed(data):  # a quality datapoint for every change of the index
            data["eval"] = _eval_after_sync(settings)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        _print_sync(data)
    sys.exit(1 if data["totals"]["failed"] or data["totals"]["held"] else 0)


def _sync(settings: Settings, quiet: bool, allow_deletes: bool = False):
    from filelock import Timeout

    from rag_assets.defs.resources import build_resources
    from rag_assets.progress import listening
    from rag_assets.shard_state import SettingsConflict
    from rag_assets.sync import run_sync

    lock = _home_lock(settings, "sync")  # one `rag-assets sync` per home at a time; a second one waits
    try:
        lock.acquire(timeout=0)
    except Timeout:
        click.echo(f"another `rag-assets sync` of this home is running; waiting for it ({lock.lock_file})", err=True)
        lock.acquire()
    instance = _instance(settings)
    bars = _SyncBars(disable=quiet)
    try:
        with listening(bars.step):
            return run_sync(instance, build_resources(settings), bars, allow_deletes, settings.sync_workers)
    except SettingsConflict as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        bars.close()
        lock.release()


class _SyncBars:
    """Two tqdm bars on stderr: shards done of the shards to run (with an ETA from the shards done so far)
    and the running shard's step, with its chunks embedded of the chunks to embed while it embeds."""

    def __init__(self, disable: bool):
        from tqdm import tqdm

        tqdm.monitor_interval = 0  # no monitor thread: sync workers fork only from a single-threaded process
        self.tqdm, self.disable = tqdm, disable
        self.shards = tqdm(desc="sync", unit="shard", total=0, disable=disable, file=sys.stderr, dynamic_ncols=True)
        self.chunks = None
        self.to_run: set[str] = set()

    def planned(self, to_run) -> None:
        self.to_run = {p.shard for p in to_run}
        self.shards.total = len(to_run)
        self.shards.set_postfix_str("nothing changed" if not to_run else f"{len(to_run)} shards to run", refresh=True)

    def step(self, p) -> None:  # rag_assets.progress listener
        self.shards.set_postfix_str(f"{p.shard}: {p.step}", refresh=True)
        if p.step == "embeddings" and p.total:
            if self.chunks is None:
                self.chunks = self.tqdm(desc=f"  {p.shard} embedding", unit="chunk", total=p.total, position=1, leave=False,
                                        disable=self.disable, file=sys.stderr, dynamic_ncols=True)
            self.chunks.update(p.done - self.chunks.n)
        elif self.chunks is not None:
            self._close_chunks()

    def finished(self, plan, row) -> None:
        self._close_chunks()
        if plan.shard in self.to_run:
            self.shards.set_postfix_str(f"{plan.shard}: {row['status']}", refresh=False)
            self.shards.update(1)

    def _close_chunks(self) -> None:
        if self.chunks is not None:
            self.chunks.close()
            self.chunks = None

    def close(self) -> None:
        self._close_chunks()
        self.shards.close()


def _index_changed(data: dict) -> bool:
    return any(row["status"] in ("new", "changed", "removed") for row in data["shards"].values())


def _eval(settings: Settings, collection: str = "", origin: str = "cli") -> dict:
    """Run retrieval_eval_job in-process (a materialization the UI plots) and return its figures."""
    from rag_assets.defs.evaluation import EVAL_TAG, eval_report, eval_run_config
    from rag_assets.defs.resources import build_resources
    from rag_assets.project_runs import execute_project_job
    from rag_assets.runs import worker_tags
    from rag_assets.sync import QUIET, root_cause

    result = execute_project_job("retrieval_eval_job", _instance(settings), build_resources(settings),
                                 run_config={**QUIET, **eval_run_config(collection)}, tags={EVAL_TAG: origin, **worker_tags()})
    if not result.success:
        errors = [root_cause(e.step_failure_data.error) for e in result.all_events if e.is_step_failure and e.step_failure_data.error]
        raise click.ClickException(f"retrieval evaluation failed: {errors[0] if errors else 'see the run in the Dagster instance'}")
    return eval_report(result)


def _eval_after_sync(settings: Settings) -> dict:
    """The evaluation after a sync; its failure is reported in the sync's output, not instead of it."""
    try:
        return _eval(settings, origin="after-sync")
    except click.ClickException as exc:
        return {"error": exc.message}


def _print_sync(data: dict) -> None:
    cols = ("status", "documents", "chunks", "embedded", "reused", "upserted", "deleted", "quarantined", "seconds")
    click.echo(f"{'shard':<24}" + "".join(f"{c:>12}" for c in cols))
    for shard, row in sorted(data["shards"].items()):
        click.echo(f"{shard:<24}" + "".join(f"{row.get(c, ''):>12}" for c in cols))
        if row.get("error"):
            click.echo(f"  error: {row['error']}", err=True)
        if row["status"] == "held":
            click.echo(f"  held: {row['reason']}", err=True)
    t = data["totals"]
    click.echo(f"{'total':<24}{'':>12}" + "".join(f"{t[c]:>12}" for c in cols[1:]))
    if "eval" in data:
        if "error" in data["eval"]:
            click.echo(f"retrieval evaluation: {data['eval']['error']}", err=True)
        else:
            _print_eval(data["eval"])


def _print_eval(report: dict) -> None:
    figures = "  ".join(f"{k} {report[k]:.3f}" for k in ("recall@1", "recall@5", "recall@10", "mrr@10"))
    click.echo(f"retrieval ({report['collection']}, {report['mode']}, {report['queries']} queries, {report['query_source']}): {figures}")
    for mode, row in report.get("modes", {}).items():
        click.echo(f"  {mode:>6}: recall@10 {row['recall@10']:.3f}  mrr@10 {row['mrr@10']:.3f}  {row['ms_per_query']:.1f} ms/query")
    if not report["passed"]:
        click.echo(f"  check failed: {report['check']}", err=True)


@main.command()
@click.argument("query")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, MAX_K), help="How many chunks.")
@click.option("--shard", default=None, help="Only this shard.")
@click.option("--mode", default=None, type=click.Choice(SEARCH_MODES),
              help="dense (meaning), sparse (BM25: exact words) or hybrid (both, fused); default: RAG_SEARCH_MODE.")
@click.option("--json", "as_json", is_flag=True)
def search(query: str, k: int, shard: str | None, mode: str | None, as_json: bool) -> None:
    """Top-k chunks for QUERY with score, shard, doc_id and text."""
    if not query.strip():
        raise click.BadParameter("the query is empty", param_hint="QUERY")
    answer = _search(Settings.from_env(), query, k, shard, mode)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    for i, h in enumerate(answer["hits"], 1):
        click.echo(f"{i}. {h['score']:.3f}  [{h['shard']}] {h['doc_id']}")
        click.echo("   " + " ".join(h["text"][:300].split()))


def _search(settings: Settings, query: str, k: int, shard: str | None, mode: str | None) -> dict:
    from rag_assets.search import Searcher, UnknownShard
    from rag_assets.sparse import ModeUnavailable

    try:
        return Searcher(settings).answer(query, k, shard, mode)
    except UnknownShard as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from exc
    except ModeUnavailable as exc:
        raise click.BadParameter(str(exc), param_hint="--mode") from exc


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
def serve(host: str, port: int) -> None:
    """Search over HTTP with the model loaded once: GET /search?q=...&k=5&shard=...&mode=hybrid, GET /health."""
    from rag_assets.search import Searcher
    from rag_assets.serve import serve as run_server

    click.echo(f"serving search on http://{host}:{port} (GET /search?q=..., GET /health)", err=True)
    run_server(Searcher(Settings.from_env()), host, port)


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--deep", is_flag=True, help="Compare every point id and chunk hash, not only the counts (reads every shard).")
def status(as_json: bool, deep: bool) -> None:
    """Per shard: documents, chunks, live points, last sync, and whether Iceberg and the index agree."""
    data = _status(Settings.from_env(), deep)
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
        return
    click.echo(f"{'shard':<24}{'documents':>10}{'chunks':>10}{'points':>10}  {'in_sync':<8} last_sync")
    for shard, row in sorted(data["shards"].items()):
        click.echo(f"{shard:<24}{row['documents']:>10}{row['chunks']:>10}{row['points']:>10}  {str(row['in_sync']):<8} {row['last_sync']}")
    for name, why in data["skipped_shards"].items():
        click.echo(f"not a shard: {name!r}: {why}", err=True)


def _status(settings: Settings, deep: bool = False) -> dict:
    """A constant number of catalog, instance and index queries whatever the shard count: counts come from
    the tables' manifests and one facet of the collection; `deep` adds an id + hash comparison per shard."""
    import datetime as dt

    import polars as pl

    from rag_assets.defs.partitions import shards
    from rag_assets.defs.resources import build_resources
    from rag_assets.shard_state import TIMESTAMP, VECTOR_INDEX_KEY, latest_metadata
    from rag_assets.steps.points import mismatches
    from rag_assets.tables import CHUNKS, RAW_DOCUMENTS, VECTOR_INDEX

    instance = _instance(settings)
    res = build_resources(settings)
    lake = res["iceberg"].lakehouse()
    partitions = instance.get_dynamic_partitions(shards.name)
    synced = latest_metadata(instance, VECTOR_INDEX_KEY)
    docs, chunk_counts, rows = (lake.row_counts(spec) for spec in (RAW_DOCUMENTS, CHUNKS, VECTOR_INDEX))
    out = {}
    index = res["qdrant"].index()
    with index.session() as session:
        points = session.shard_counts()
        for shard in partitions:
            stamp = synced.get(shard, {}).get(TIMESTAMP)
            agree = rows.get(shard, 0) == points.get(shard, 0)
            if deep and agree:
                expected = pl.from_arrow(lake.read_partition(VECTOR_INDEX, shard, ("point_id", "chunk_hash")))
                agree = not any(mismatches(expected, session.shard_points(shard)).values())
            out[shard] = {
                "documents": docs.get(shard, 0),
                "chunks": chunk_counts.get(shard, 0),
                "points": points.get(shard, 0),
                "last_sync": dt.datetime.fromtimestamp(stamp, dt.timezone.utc).isoformat() if stamp else None,
                "in_sync": bool(stamp) and agree,
            }
    source = res["source"].open()
    try:
        source.shard_names()  # the top level only: what is not a shard, and why
    except (FileNotFoundError, OSError):
        pass  # the source is unreachable: status still reports the tables and the index
    return {"collection": res["qdrant"].collection, "physical_collection": index.collection, "shards": out,
            "skipped_shards": dict(source.skipped)}


def _run_job(job_name: str, node: str, what: str) -> dict:
    """Run one of the project's op jobs in-process, recorded in the Dagster instance; return `node`'s output."""
    from rag_assets.defs.resources import build_resources
    from rag_assets.project_runs import execute_project_job
    from rag_assets.runs import SYNC_TAG, worker_tags
    from rag_assets.sync import QUIET

    settings = Settings.from_env()
    result = execute_project_job(
        job_name, _instance(settings), build_resources(settings), run_config=QUIET, tags={SYNC_TAG: "cli", **worker_tags()},
    )
    if not result.success:
        raise click.ClickException(f"{what} failed; see the run's logs in the Dagster instance")
    return result.output_for_node(node)


@main.command(name="eval")
@click.option("--collection", default="", help="Evaluate this collection instead of the configured one.")
@click.option("--json", "as_json", is_flag=True)
def eval_command(collection: str, as_json: bool) -> None:
    """Retrieval quality of the collection: recall@1/5/10 and MRR@10 over RAG_EVAL_QUERIES or known-item
    queries from the corpus (a retrieval_eval materialization). Exits 1 when recall fell beyond RAG_EVAL_TOLERANCE."""
    report = _eval(Settings.from_env(), collection)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        _print_eval(report)
    sys.exit(0 if report["passed"] else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def reconcile(as_json: bool) -> None:
    """What the nightly schedule does, now: repair drift between vector_index and the live collection."""
    report = _run_job("reconcile_job", "reconcile", "reconciliation")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"collection {report['collection']}: {report['totals']}")
    for shard, row in sorted(report["shards"].items()):
        click.echo(f"  {shard}: {row}")


@main.command()
@click.option("--json", "as_json", is_flag=True)
def maintain(as_json: bool) -> None:
    """What the nightly maintenance schedule does, now: expire old snapshots, delete unreferenced files, old runs."""
    report = _run_job("maintenance_job", "maintain", "maintenance")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    cols = ("snapshots_before", "expired_snapshots", "snapshots", "manifests", "metadata_versions", "deleted", "kept_young")
    click.echo(f"{'table':<16}" + "".join(f"{c:>18}" for c in cols))
    for name, row in report["tables"].items():
        click.echo(f"{name:<16}" + "".join(f"{row.get(c, ''):>18}" for c in cols))
    click.echo(f"runs: {report['runs']}")


@main.command()
@click.option("--to", "to", required=True, help="ISO 8601 time (UTC when no zone is given), within the snapshot retention window.")
@click.option("--json", "as_json", is_flag=True)
def rollback(to: str, as_json: bool) -> None:
    """Every table back to its snapshot as of --to, the live collection reconciled to them (no model call), and the
    sync state made to agree so that the next sync neither undoes it nor re-embeds anything."""
    from rag_assets.defs.jobs import rollback_run_config
    from rag_assets.defs.resources import build_resources
    from rag_assets.project_runs import execute_project_job
    from rag_assets.runs import SYNC_TAG, worker_tags
    from rag_assets.sync import QUIET, root_cause

    settings = Settings.from_env()
    with _home_lock(settings, "sync"):  # no sync of this home runs while the tables go back
        result = execute_project_job("rollback_job", _instance(settings), build_resources(settings),
                                     run_config={**QUIET, **rollback_run_config(to)}, tags={SYNC_TAG: "cli", **worker_tags()})
    if not result.success:
        errors = [root_cause(e.step_failure_data.error) for e in result.all_events if e.is_step_failure and e.step_failure_data.error]
        raise click.ClickException(f"rollback failed: {errors[0] if errors else 'see the run in the Dagster instance'}")
    report = result.output_for_node("rollback")
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    click.echo(f"rolled back to {report['to']} (collection {report['collection']}: {report['index']})")
    for table, row in report["tables"].items():
        click.echo(f"  {table}: {row['rows_before']} -> {row['rows_after']} rows (snapshot {row['snapshot_id']} of {row['snapshot_at']})")


@main.command()
@click.option("--model", default="", help="The target model (a sentence-transformers id or folder); default: RAG_EMBED_MODEL.")
@click.option("--backend", default="", type=click.Choice(["", "torch", "onnx"]), help="The target backend; default: RAG_EMBED_BACKEND.")
@click.option("--chunk-tokens", default=0, type=click.IntRange(0), help="The target chunk size; default: RAG_CHUNK_TOKENS.")
@click.option("--chunk-overlap", default=-1, type=click.IntRange(-1), help="The target chunk overlap; default: RAG_CHUNK_OVERLAP.")
@click.option("--quantization", default="", type=click.Choice(["", "none", "int8", "binary"]),
              help="The target's vector compression; default: RAG_QDRANT_QUANTIZATION.")
@click.option("--sparse", default="", type=click.Choice(["", "bm25", "none"]),
              help="The target's sparse vectors (BM25, for hybrid search); default: RAG_SPARSE.")
@click.option("--force", is_flag=True, help="Switch the alias even when the new collection evaluates worse.")
@click.option("--drop-old", is_flag=True, help="Drop the alias's other collections once it points at the target.")
@click.option("--json", "as_json", is_flag=True)
def migrate(model: str, backend: str, chunk_tokens: int, chunk_overlap: int, quantization: str, sparse: str, force: bool,
            drop_old: bool, as_json: bool) -> None:
    """Build the alias's collection for another model or chunker beside the live one (syncs go on), evaluate
    both, and switch the alias only if the new one is not worse. Exits 1 when the evaluation kept the alias."""
    from rag_assets.defs.migration import migration_run_config
    from rag_assets.defs.resources import build_resources
    from rag_assets.project_runs import execute_project_job
    from rag_assets.runs import SYNC_TAG, worker_tags
    from rag_assets.sync import QUIET, root_cause

    settings = Settings.from_env()
    config = {"model": model, "backend": backend, "chunk_tokens": chunk_tokens, "chunk_overlap": chunk_overlap,
              "quantization": quantization, "sparse": sparse, "force": force, "drop_old": drop_old}
    with _home_lock(settings, "migrate"):  # one migration at a time; syncs are not held back
        result = execute_project_job("migration_job", _instance(settings), build_resources(settings),
                                     run_config={**QUIET, **migration_run_config(**config)}, tags={SYNC_TAG: "cli", **worker_tags()})
    if not result.success:
        errors = [root_cause(e.step_failure_data.error) for e in result.all_events if e.is_step_failure and e.step_failure_data.error]
        raise click.ClickException(f"migration failed: {errors[0] if errors else 'see the run in the Dagster instance'}")
    report = result.output_for_node("finish_migration")
    if as_json:
        click.echo(json.dumps(report, indent=2, default=str))
    else:
        click.echo(f"{report['alias']}: {report['from']} -> {report['to']}: "
                   f"{'switched' if report['switched'] else 'not switched'} ({report['reason']})")
        for role, row in report.get("eval", {}).items():
            click.echo(f"  {role}: {row['collection']} recall@10 {row['recall@10']:.3f} mrr@10 {row['mrr@10']:.3f}")
        if report["switched"]:
            click.echo("now set " + " ".join(f"{k}={v}" for k, v in report["settings"].items())
                       + " in the deployment's configuration: syncs wait for it", err=True)
    sys.exit(0 if report["switched"] or report["reason"] == "already live" else 1)


@main.command()
@click.option("--json", "as_json", is_flag=True)
def repair(as_json: bool) -> None:
    """Restore damaged tables (an unreadable metadata.json, a missing data file) and re-sync the shards they cost."""
    from rag_assets.defs.resources import build_resources
    from rag_assets.repair import repair as run_repair

    settings = Settings.from_env()
    with _home_lock(settings, "sync"):  # no sync of this home writes while tables are repaired
        data = run_repair(_instance(settings), build_resources(settings)).as_json()
    if as_json:
        click.echo(json.dumps(data, indent=2, default=str))
    else:
        for table, moved in data["restored"].items():
            click.echo(f"{table}: metadata restored from {moved['to']} (unreadable: {moved['from']})")
        for table, files in data["missing_files"].items():
            click.echo(f"{table}: {len(files)} missing data files dropped")
        click.echo(f"re-synced shards: {', '.join(data['resynced_shards']) or 'none'}")
        _print_sync(data["sync"])
    sys.exit(1 if data["sync"]["totals"]["failed"] else 0)


@main.command()
@click.option("--query", default="How do I parse a JSON document into Python objects?", show_default=True)
def demo(query: str) -> None:
    """Build a demo source from the Python standard library's own documentation, sync it, and search it."""
    from rag_assets.demo import build_demo_source
    from rag_assets.embedding import embedder_options
    from rag_assets.model_process import model_process

    settings = Settings.from_env()
    if "://" in settings.source:
        raise click.UsageError(f"the demo writes its documents into a local folder; RAG_SOURCE is {settings.source}")
    created = build_demo_source(Path(settings.source))
    click.echo(f"demo source: {settings.source} ({created} documents in {len(list(Path(settings.source).iterdir()))} shards)")
    with model_process(embedder_options(**settings.model_options())):  # one model for the sync, evaluation and search
        data = _sync(settings, quiet=False).as_json()
        if settings.eval_after_sync and _index_changed(data):
            data["eval"] = _eval_after_sync(settings)
        _print_sync(data)
        answer = _search(settings, query, 3, None, None)
    click.echo(f"\nsearch ({answer['mode']}): {query}")
    for i, h in enumerate(answer["hits"], 1):
        click.echo(f"{i}. {h['score']:.3f}  [{h['shard']}] {h['doc_id']}\n   " + " ".join(h["text"][:200].split()))
    click.echo("\nNext: `make dev` opens the Dagster UI on http://127.0.0.1:3000")
    sys.exit(1 if data["totals"]["failed"] else 0)


def run() -> None:
    """The `rag-assets` command: `main`, then an exit without the interpreter's teardown.

    Python's teardown frees, one by one, every object of the thousands of modules a command imported
    (dagster, pyiceberg, sqlalchemy): ~0.65 s of a 6.5 s sync here, measured (benchmarks/RESULTS.md). By the
    time `main` returns, every write is committed and every file closed. The exit does what Python's own
    exit does before its teardown, in its order: wait for every thread that is not a daemon (the idle
    threads of thread pools, which pyiceberg and the chunker keep, are told to stop first), run the
    atexit handlers (logging's flush, temp folders), flush stdout and stderr; then it ends the process.
    """
    try:
        main()
    except SystemExit as exc:
        wait_for_threads = getattr(threading, "_shutdown", None)  # the interpreter's own first exit step (Py_FinalizeEx)
        if wait_for_threads is None or threading.current_thread() is not threading.main_thread():
            raise  # the normal exit: only the main thread may end the process, and only as Python's exit would
        code = exc.code
        if not isinstance(code, int):  # what Python does with sys.exit(None) or sys.exit("message")
            if code is not None:
                print(code, file=sys.stderr)
            code = 0 if code is None else 1
        try:
            wait_for_threads()
        except BaseException:  # noqa: BLE001 - e.g. Ctrl-C while waiting: reported and ignored, as Python's exit does
            print("Exception ignored while waiting for threads at exit:", file=sys.stderr)
            traceback.print_exc()
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            if stream is None or stream.closed:  # started with it closed (`>&-`): nothing to flush
                continue
            try:
                stream.flush()
            except (OSError, ValueError):  # cannot be written (a closed pipe, a full disk): 120, as Python's own exit
                code = code or 120
        os._exit(code)


if __name__ == "__main__":
    run()
