"""`migration_job`: the live alias to another model or chunker, quality-gated (rag_assets/migration.py).

plan (the target and the shards to build) -> one build step per shard (a dynamic fan-out: each shard is a
step of its own in the UI, and a re-run of the job builds only what is not built yet) -> finish (catch
up with the shards synced meanwhile, evaluate both collections on one query set, switch the alias if the
target is not worse, drop the old collections when asked).
"""

import json
import re

import dagster as dg

from rag_assets import aliases
from rag_assets.defs.evaluation import EVAL_KEY, measure
from rag_assets.defs.partitions import shards
from rag_assets.config import QUANTIZATIONS, SPARSE_ENCODINGS
from rag_assets.defs.resources import EvalResource, IcebergResource, ModelResource, QdrantResource, index_identity
from rag_assets.migration import BUILT_KEY, TargetBuilder
from rag_assets.runs import busy_shards
from rag_assets.shard_state import FINGERPRINT, VECTOR_INDEX_KEY, latest_metadata
from rag_assets.vector_store import VectorStore

CATCH_UP_PASSES = 5  # rounds of "build again what was synced since"; what is left is synced after the switch


class MigrationConfig(dg.Config):
    model: str = ""  # the target model (an id or a folder); "" = the configured one (RAG_EMBED_MODEL)
    backend: str = ""  # torch | onnx; "" = the configured one
    chunk_tokens: int = 0  # 0 = the configured one
    chunk_overlap: int = -1  # -1 = the configured one
    quantization: str = ""  # none | int8 | binary; "" = the configured one (RAG_QDRANT_QUANTIZATION)
    sparse: str = ""  # bm25 | none; "" = the configured one (RAG_SPARSE)
    force: bool = False  # switch even when the target evaluates worse
    drop_old: bool = False  # drop the alias's other collections once it points at the target


def target_model(model: ModelResource, config: MigrationConfig) -> ModelResource:
    return ModelResource(**{**model.model_dump(), **({"model": config.model} if config.model else {}),
                            **({"backend": config.backend} if config.backend else {}),
                            **({"chunk_tokens": config.chunk_tokens} if config.chunk_tokens else {}),
                            **({"chunk_overlap": config.chunk_overlap} if config.chunk_overlap >= 0 else {}),
                            **({"sparse": config.sparse} if config.sparse else {})})


def built_fingerprints(instance: dg.DagsterInstance, collection: str) -> dict[str, str]:
    """shard -> the fingerprint it was last built from into `collection` (one instance KV entry per
    collection; blanked when the collection is dropped, so entries stay as few as collections ever built)."""
    key = BUILT_KEY.format(collection=collection)
    return json.loads(instance.run_storage.get_cursor_values({key}).get(key) or "{}")


def record_built(instance: dg.DagsterInstance, collection: str, built: dict[str, str]) -> None:
    # Build steps of a run run one after another (in-process executor), so this read-modify-write does not
    # race within a run; two runs of one migration at once could lose a record, which costs a rebuild only.
    key = BUILT_KEY.format(collection=collection)
    instance.run_storage.set_cursor_values({key: json.dumps({**built_fingerprints(instance, collection), **built})})


def stale_shards(instance: dg.DagsterInstance, collection: str) -> tuple[dict[str, str], list[str]]:
    """({shard: the fingerprint it is synced to} of the shards not yet built at that fingerprint and not busy,
    the busy ones)."""
    synced = {s: str(m.get(FINGERPRINT) or "") for s, m in latest_metadata(instance, VECTOR_INDEX_KEY).items()}
    known = set(instance.get_dynamic_partitions(shards.name))  # one query, not one per shard
    synced = {s: fp for s, fp in synced.items() if s in known}
    built = built_fingerprints(instance, collection)
    busy = busy_shards(instance)
    stale = {s: fp for s, fp in synced.items() if built.get(s) != fp}
    return {s: fp for s, fp in stale.items() if s not in busy}, sorted(set(stale) & busy)


def _mapping_key(i: int, shard: str) -> str:
    return f"s{i}_{re.sub(r'[^A-Za-z0-9_]', '_', shard)[:40]}"


@dg.op(out={"target": dg.Out(dict), "shards": dg.DynamicOut(dict)},
       description="The target collection (alias + model + chunker) and the shards it has to be built for.")
def plan_migration(context: dg.OpExecutionContext, config: MigrationConfig, qdrant: QdrantResource, model: ModelResource):
    alias = qdrant.alias_index()
    try:  # a collection from before aliases becomes the live one first (sparse vectors came later: it has none)
        aliases.adopt_legacy(alias, model.identity())
    except aliases.IdentityConflict as exc:
        raise dg.Failure(str(exc)) from exc
    live = aliases.live(alias)
    if live.identity is None:
        raise dg.Failure(f"the alias {alias.collection!r} serves no collection yet (or one from before aliases): "
                         "run a sync first, which creates (or adopts) it")
    if config.quantization and config.quantization not in QUANTIZATIONS:
        raise dg.Failure(f"quantization must be one of {', '.join(QUANTIZATIONS)}, got {config.quantization!r}")
    if config.sparse and config.sparse not in SPARSE_ENCODINGS:
        raise dg.Failure(f"sparse must be one of {', '.join(SPARSE_ENCODINGS)}, got {config.sparse!r}")
    identity = index_identity(target_model(model, config), qdrant, config.quantization)
    physical = aliases.physical_name(alias.collection, identity)
    target = {"alias": alias.collection, "from": live.collection, "to": physical, "identity": identity,
              "force": config.force, "drop_old": config.drop_old}
    yield dg.Output(target, "target")
    if physical == live.collection:
        context.log.info(f"{physical!r} is already live ({aliases.describe(identity)}): nothing to build")
        return
    todo, busy = stale_shards(context.instance, physical)
    context.log.info(f"building {physical!r} ({aliases.describe(identity)}) for {len(todo)} shards"
                     + (f"; {len(busy)} busy, left to the catch-up" if busy else ""))
    for i, (shard, fingerprint) in enumerate(sorted(todo.items())):
        yield dg.DynamicOutput({"shard": shard, "fingerprint": fingerprint}, output_name="shards", mapping_key=_mapping_key(i, shard))


def build_shards(context, target: dict, todo: dict[str, str], iceberg: IcebergResource, qdrant: QdrantResource,
                 model: ModelResource) -> dict[str, dict]:
    """Build `todo` (shard -> synced fingerprint) into the target collection; record each build."""
    lake = iceberg.lakehouse()
    chosen = model.with_identity(target["identity"])
    out = {}
    with qdrant.index(target["to"]).session() as session:
        builder = TargetBuilder(lake, VectorStore(lake), session, chosen.chunker(), target["identity"]["model"],
                                target["identity"], chosen.embedder)
        for shard, fingerprint in todo.items():
            out[shard] = builder.build(shard, context.log).as_dict()
            record_built(context.instance, target["to"], {shard: fingerprint})
    return out


@dg.op(description="Build one shard's points in the target collection (vectors from the store, else the target model).")
def build_migration_shard(context: dg.OpExecutionContext, item: dict, target: dict, iceberg: IcebergResource,
                          qdrant: QdrantResource, model: ModelResource) -> dict:
    built = build_shards(context, target, {item["shard"]: item["fingerprint"]}, iceberg, qdrant, model)
    context.add_output_metadata({"shard": item["shard"], **built[item["shard"]]})
    return built


def catch_up(context, target: dict, iceberg, qdrant, model) -> dict:
    """Build again the shards synced since their build, delete removed shards from the target."""
    rebuilt: dict[str, dict] = {}
    busy: list[str] = []
    passes = 0
    for passes in range(1, CATCH_UP_PASSES + 1):
        todo, busy = stale_shards(context.instance, target["to"])
        if not todo:
            break
        rebuilt.update(build_shards(context, target, todo, iceberg, qdrant, model))
    known = set(context.instance.get_dynamic_partitions(shards.name))
    with qdrant.index(target["to"]).session() as session:
        removed = sorted(s for s in session.shard_counts() if s not in known)
        for shard in removed:
            session.delete_shard(shard)
    return {"passes": passes, "rebuilt": rebuilt, "removed": removed, "left_to_the_next_sync": busy}


def worse_modes(old: dict, new: dict, tolerance: float) -> list[str]:
    """Where the target finds less than the live collection: recall@10 in the configured search mode, and in
    each mode both collections answer, lower by more than `tolerance`. Every mode counts because one can
    hide another: BM25 finds known items so well that hybrid alone would let a worse model through."""
    pairs = [(f"{new['mode']} (RAG_SEARCH_MODE)", old["recall@10"], new["recall@10"])]
    pairs += [(mode, old["modes"][mode]["recall@10"], row["recall@10"]) for mode, row in new["modes"].items() if mode in old["modes"]]
    return [f"{mode} recall@10 {now:.3f} against {live:.3f} live" for mode, live, now in pairs if now < live - tolerance]


@dg.op(description="Catch up, evaluate the live and the target collection, switch the alias if the target is not worse.")
def finish_migration(context: dg.OpExecutionContext, target: dict, built: list[dict], iceberg: IcebergResource,
                     qdrant: QdrantResource, model: ModelResource, eval_settings: EvalResource) -> dict:
    alias = qdrant.alias_index()
    report = {**{k: target[k] for k in ("alias", "from", "to")}, "target": target["identity"],
              "shards": {s: row for part in built for s, row in part.items()}, "switched": False}
    if target["to"] != target["from"]:
        report["catch_up"] = catch_up(context, target, iceberg, qdrant, model)
        evals = {}
        for role in ("old", "new"):
            m = measure(context.instance, iceberg, qdrant, model, eval_settings, target["from" if role == "old" else "to"], context.log)
            context.log_event(dg.AssetMaterialization(EVAL_KEY, metadata={**m.metadata, "migration": role}))  # plotted in the UI
            evals[role] = m.report
        report["eval"] = evals
        worse = worse_modes(evals["old"], evals["new"], eval_settings.tolerance)
        summary = f"{evals['new']['mode']} recall@10 {evals['new']['recall@10']:.3f} against {evals['old']['recall@10']:.3f} live"
        if not worse or target["force"]:
            aliases.switch(alias, target["to"])
            # From now on syncs keep it: a later migration back to it builds every shard again (a diff).
            context.instance.run_storage.set_cursor_values({BUILT_KEY.format(collection=target["to"]): ""})
            report.update(switched=True, reason=summary + ("" if not worse else f" (--force; worse: {'; '.join(worse)})"))
        else:
            report["reason"] = (f"{'; '.join(worse)}: below the live collection by more than RAG_EVAL_TOLERANCE="
                                f"{eval_settings.tolerance:g}, the alias stays (--force switches anyway)")
    else:
        report["reason"] = "already live"
    live = aliases.live(alias)
    if target["drop_old"] and live.collection == target["to"]:
        report["dropped"] = aliases.others(alias)
        for name in report["dropped"]:
            alias.drop_collection(name)
            context.instance.run_storage.set_cursor_values({BUILT_KEY.format(collection=name): ""})
    report["live"] = live.collection
    report["settings"] = aliases.settings_for(live.identity) if live.identity else {}
    context.log.info(f"migration: {json.dumps({k: report[k] for k in ('from', 'to', 'switched', 'reason')})}")
    return report


@dg.job(executor_def=dg.in_process_executor,
        description="Move the alias to another model or chunker: build the new collection beside the live one, "
                    "catch up, evaluate both, switch only if not worse (rag_assets/migration.py).")
def migration_job():
    target, todo = plan_migration()
    built = todo.map(lambda item: build_migration_shard(item, target))
    finish_migration(target, built.collect())


def migration_run_config(**config) -> dict:
    return {"ops": {"plan_migration": {"config": config}}}
