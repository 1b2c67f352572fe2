"""`retrieval_eval`: how well the live collection finds the right documents, plotted over time.

Materialized after syncs (the sensor asks once the shard runs have settled; `rag-assets sync` after a sync
that changed the index), on a schedule, and by `rag-assets eval`. The metrics are materialization
metadata, so the asset's page plots them; the check fails when recall@10 falls by more than
RAG_EVAL_TOLERANCE below the last accepted value of the same collection and query set.
"""

import time
from dataclasses import dataclass

import dagster as dg

from rag_assets import evaluation
from rag_assets.defs.assets import GROUP, OWNERS, vector_index
from rag_assets.defs.resources import EvalResource, IcebergResource, ModelResource, QdrantResource
from rag_assets.shard_state import VECTOR_INDEX_KEY
from rag_assets.sparse import usable_mode

MODES = ("dense", "sparse", "hybrid")  # measured side by side on a collection with sparse vectors

EVAL_KEY = dg.AssetKey("retrieval_eval")
RECALL_NOT_WORSE = dg.AssetCheckSpec(
    "recall_not_worse", asset=EVAL_KEY,
    description="recall@10 is not more than RAG_EVAL_TOLERANCE below the last accepted value (same collection and queries).",
)
HISTORY = 50  # earlier evaluations searched for the accepted value of a collection


class EvalConfig(dg.Config):
    collection: str = ""  # evaluate this collection instead of the configured one (e.g. a migration's new one)


def _earlier(instance: dg.DagsterInstance) -> list[dict]:
    """Metadata values of the latest evaluations, newest first."""
    records = instance.fetch_materializations(EVAL_KEY, limit=HISTORY).records
    return [{k: v.value for k, v in r.asset_materialization.metadata.items()} for r in records]


def choose_queries(lake, settings: EvalResource, earlier: list[dict], log) -> tuple[list[evaluation.Query], list[evaluation.Query], str]:
    """(the queries scored now, the query set they belong to, where it came from): the file, the kept
    known-item set (scored on the queries whose answer still exists; its id stays that of the whole set,
    so the accepted value keeps applying), or a new one when fewer than MIN_VALID of them are left."""
    if settings.queries_file:
        queries = evaluation.load_queries(settings.queries_file)
        return queries, queries, f"file {settings.queries_file}"
    docs = evaluation.document_ids(lake)
    kept = next((m["query_set"] for m in earlier if m.get("query_set")), None)
    if kept:
        queries = [evaluation.Query(q["query"], tuple(q["doc_ids"])) for q in kept]
        answerable = evaluation.still_answerable(queries, docs)
        if len(answerable) >= evaluation.MIN_VALID * len(queries):
            return answerable, queries, "known-item (kept)"
        log.info(f"only {len(answerable)} of the {len(queries)} kept queries still have their document: a new set")
    queries = evaluation.known_item_queries(lake, docs, settings.size)
    return queries, queries, "known-item (new)"


@dataclass(frozen=True)
class Measurement:
    metadata: dict  # the retrieval_eval materialization's metadata
    passed: bool  # recall@10 not more than the tolerance below the collection's accepted value
    why: str
    accepted: float | None

    @property
    def report(self) -> dict:
        plain = {k: v.value if isinstance(v, dg.MetadataValue) else v for k, v in self.metadata.items()}
        return _report(plain, self.passed, f"{self.metadata['collection']}: {self.why}")


def measure(instance: dg.DagsterInstance, iceberg: IcebergResource, qdrant: QdrantResource, model: ModelResource,
            eval_settings: EvalResource, collection: str, log) -> Measurement:
    """Evaluate `collection` ("" = the one the alias serves) on the kept query set, its queries embedded
    by the collection's own model; a migration measures the old and the new collection with it."""
    started = time.perf_counter()
    earlier = _earlier(instance)
    queries, query_set, source = choose_queries(iceberg.lakehouse(), eval_settings, earlier, log)
    index = qdrant.index(collection)
    with index.session() as session:
        if not session.exists():  # a mistyped --collection, or nothing synced yet: not a recall of 0 that passes
            raise dg.Failure(f"collection {index.collection!r} does not exist (nothing synced into it yet?)")
    identity = qdrant.alias_index().identity(index.collection)  # queries are encoded as the collection's points were
    chosen = model.with_identity(identity) if identity else model
    embedder, encoder = chosen.embedder(), chosen.sparse_encoder()
    mode = usable_mode(eval_settings.mode, identity, index.collection)  # what search does there: the one judged
    by_mode = {}
    searches = evaluation.index_searches(embedder, encoder, index, MODES if encoder else ("dense",), [q.query for q in queries])
    for name, search in searches.items():
        timed = time.perf_counter()
        by_mode[name] = {**evaluation.evaluate(search, queries), "ms_per_query": round((time.perf_counter() - timed) * 1000 / max(len(queries), 1), 2)}
    metrics = {k: v for k, v in by_mode[mode].items() if k != "ms_per_query"}
    set_id = evaluation.query_set_id(query_set)
    accepted = next((m.get("accepted_recall@10") for m in earlier
                     if m.get("collection") == index.collection and m.get("query_set_id") == set_id
                     and m.get("mode", "dense") == mode), None)  # (evaluations before search modes were dense)
    passed, why = evaluation.tolerance_check(metrics["recall@10"], accepted, eval_settings.tolerance)
    # The accepted value only rises: drops within the tolerance must not add up from one run to the next.
    new_accepted = (max(accepted, metrics["recall@10"]) if accepted is not None else metrics["recall@10"]) if passed else accepted
    log.info(f"{index.collection}: {mode} {metrics} ({source}); {why}; by mode: {by_mode}")
    metadata = {
        **metrics,
        "mode": mode,
        # Every mode the collection can answer, side by side (each also as a plotted number).
        "modes": dg.MetadataValue.json(by_mode),
        **{f"{name}_{figure}": value for name, row in by_mode.items() for figure, value in row.items()
           if figure in ("recall@10", "mrr@10", "ms_per_query")},
        "collection": index.collection,
        "alias": qdrant.collection,
        "model": embedder.info.key,
        "query_source": source,
        "query_set_id": set_id,
        # Kept for the next evaluation (the file's queries are read from the file each time).
        "query_set": dg.MetadataValue.json([] if eval_settings.queries_file else
                                           [{"query": q.query, "doc_ids": list(q.doc_ids)} for q in query_set]),
        "accepted_recall@10": new_accepted,
        "seconds": round(time.perf_counter() - started, 3),
    }
    return Measurement(metadata, passed, why, accepted)


@dg.asset(
    group_name=GROUP, owners=OWNERS, kinds={"qdrant", "python"}, deps=[vector_index], check_specs=[RECALL_NOT_WORSE],
    description="Known-item (or RAG_EVAL_QUERIES) retrieval quality of the live collection: recall@1/5/10 and MRR@10 in "
                "RAG_SEARCH_MODE, and of dense, sparse and hybrid search side by side.",
)
def retrieval_eval(
    context: dg.AssetExecutionContext, config: EvalConfig, iceberg: IcebergResource, qdrant: QdrantResource,
    model: ModelResource, eval_settings: EvalResource,
) -> dg.MaterializeResult:
    m = measure(context.instance, iceberg, qdrant, model, eval_settings, config.collection, context.log)
    return dg.MaterializeResult(
        metadata=m.metadata,
        check_results=[dg.AssetCheckResult(
            check_name=RECALL_NOT_WORSE.name, passed=m.passed, description=f"{m.metadata['collection']}: {m.why}",
            metadata={"recall@10": m.metadata["recall@10"], "accepted_recall@10": m.accepted if m.accepted is not None else -1.0,
                      "tolerance": eval_settings.tolerance},
        )],
    )


retrieval_eval_job = dg.define_asset_job(
    "retrieval_eval_job", selection=dg.AssetSelection.assets(retrieval_eval),
    description="Measure the live collection's retrieval quality (retrieval_eval).",
)


EVAL_TAG = "rag/eval"  # why a retrieval_eval run was requested: after-sync | cli


def eval_request_after_sync(instance: dg.DagsterInstance) -> list[dg.RunRequest]:
    """One retrieval_eval run per state of the index, keyed by the newest vector_index materialization
    (a sensor never requests a run key twice); none before the first sync."""
    records = instance.fetch_materializations(VECTOR_INDEX_KEY, limit=1).records
    if not records:
        return []
    return [dg.RunRequest(job_name=retrieval_eval_job.name, run_key=f"retrieval_eval@{records[0].storage_id}",
                          tags={EVAL_TAG: "after-sync"})]


def eval_run_config(collection: str = "") -> dict:
    return {"ops": {"retrieval_eval": {"config": {"collection": collection}}}}


def eval_report(result) -> dict:
    """`rag-assets eval --json` from a retrieval_eval run's materialization and check."""
    (event,) = [e for e in result.get_asset_materialization_events() if e.asset_key == EVAL_KEY]
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    (check,) = result.get_asset_check_evaluations()
    return _report(meta, check.passed, check.description)


def _report(meta: dict, passed: bool, check: str) -> dict:
    """What `rag-assets eval --json` prints (and `migrate --json` for each collection)."""
    return {
        "collection": meta["collection"], "alias": meta.get("alias"), "mode": meta.get("mode", "dense"),
        "modes": meta.get("modes", {}), "queries": meta["queries"],
        **{f"recall@{n}": meta[f"recall@{n}"] for n in evaluation.RECALL_AT}, "mrr@10": meta["mrr@10"],
        "query_source": meta["query_source"], "query_set_id": meta["query_set_id"], "passed": passed, "check": check,
    }

