"""The shard-sync contract: what a synced shard records, and what each shard needs now.

"Why did shard X re-run?" is answered in this file. Every `vector_index` materialization records
`synced_state(...)`: the source fingerprint the shard is now fully synced to and the index settings
(chunker, model, collection) its points were built with. That record is Dagster's own state, so a run
that failed half-way leaves the old record and the shard is picked up again on the next tick or sync.
`plan_shards` compares the record with the current listing and settings:

- new:       the shard is not a partition yet, or was never synced into the index;
- changed:   its listing fingerprint differs (reason "source"), or its index settings do ("settings");
- unchanged: neither differs; nothing runs;
- removed:   a partition the source no longer lists (reason "rolled_back" when a rollback brought it
             back although the source did not list it: the deletion guard holds it).

A model or chunker other than the one of the collection the alias serves raises `SettingsConflict`
before anything runs (`check_live`): that change is a migration (rag_assets/aliases.py, migration.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import dagster as dg
from dagster._core.events import DagsterEventType

from rag_assets.defs.partitions import shards
from rag_assets.source import Source

RAW_DOCUMENTS_KEY = dg.AssetKey("raw_documents")
CHUNKS_KEY = dg.AssetKey("chunks")
EMBEDDINGS_KEY = dg.AssetKey("embeddings")
VECTOR_INDEX_KEY = dg.AssetKey("vector_index")

FINGERPRINT = "source_fingerprint"  # recorded by raw_documents (as read) and vector_index (as synced)
CHUNKER, MODEL, COLLECTION = "index_chunker", "index_model", "index_collection"
QUANTIZATION = "index_quantization"  # recorded only when not "none" (records from before it stay valid)
SPARSE = "index_sparse"  # the sparse encoder key; likewise recorded only when not "none"
SETTINGS = (CHUNKER, MODEL, COLLECTION, QUANTIZATION, SPARSE)  # every key `index_settings` may record
TIMESTAMP = "_timestamp"  # added by `latest_metadata`: when the materialization was recorded
ROLLED_BACK = "rolled_back_to"  # on the records `rag-assets rollback` writes (rollback.py)
# The synced fingerprint of a shard that a rollback brought back although the source no longer lists it:
# it is "removed" with reason ROLLED_BACK_REASON, which the deletion guard holds until deletes are allowed.
ABSENT_FINGERPRINT = "absent"
ROLLED_BACK_REASON = "rolled_back"


@dataclass(frozen=True)
class ShardPlan:
    shard: str
    status: str  # new | changed | unchanged | removed
    fingerprint: str = ""
    reason: str = ""  # why a shard is "changed": source | settings

    @property
    def whole_shard(self) -> bool:
        """The run builds the whole shard (new, or changed settings: every chunk to embed unless the vector
        store has it) rather than applying the source's edits."""
        return self.status == "new" or self.reason == "settings"


class SettingsConflict(RuntimeError):
    """The configured model differs from the one a collection was built with, and the collection did not change."""


def index_settings(model, qdrant) -> dict[str, str]:
    """What a synced shard's points depend on besides its content, from the model and qdrant resources:
    the chunker (which includes the model's tokenizer), the model, the collection, its quantization and the
    sparse encoder."""
    settings = {CHUNKER: model.chunker_settings_key(), MODEL: model.info().key, COLLECTION: qdrant.collection}
    encoder = model.sparse_encoder()
    return (settings | ({QUANTIZATION: qdrant.quantization} if qdrant.quantization != "none" else {})
            | ({SPARSE: encoder.key} if encoder else {}))


def latest_materialization_records(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: set[str] | None = None
) -> list:
    """The newest materialization record of each partition of `asset_key`, in two queries for all shards."""
    ids = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions
    )
    if not ids:
        return []
    return list(instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(ids.values())), limit=len(ids)
    ).records)


def latest_metadata(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partitions: set[str] | None = None
) -> dict[str, dict[str, object]]:
    """partition -> metadata values of that partition's newest materialization (plus `_timestamp`)."""
    return {
        r.partition_key: {**{k: v.value for k, v in r.asset_materialization.metadata.items()}, TIMESTAMP: r.timestamp}
        for r in latest_materialization_records(instance, asset_key, partitions)
        if r.partition_key
    }


def synced_state(instance: dg.DagsterInstance, shard: str, settings: Mapping[str, str]) -> dict[str, str]:
    """The metadata `vector_index` records once `shard` is in the index: the fingerprint of the
    documents it was built from (the newest raw_documents materialization) and the index settings."""
    read = latest_metadata(instance, RAW_DOCUMENTS_KEY, {shard}).get(shard, {})
    return {FINGERPRINT: str(read.get(FINGERPRINT) or ""), **settings}


def check_live(model, qdrant) -> None:
    """Raise SettingsConflict when the configured model, chunker, quantization or sparse encoder is not the live
    collection's."""
    from rag_assets.aliases import conflict
    from rag_assets.defs.resources import index_identity

    if why := conflict(qdrant.alias_index(), index_identity(model, qdrant)):
        raise SettingsConflict(why)


def plan_shards(
    fingerprints: Mapping[str, str],
    known: set[str],
    synced: Mapping[str, Mapping[str, object]],
    settings: Mapping[str, str],
) -> list[ShardPlan]:
    """One plan per shard from the listing (shard -> fingerprint), the shard partitions, the synced
    records (`latest_metadata` of vector_index) and the configured index settings."""
    plans = []
    for shard, fp in fingerprints.items():
        meta = synced.get(shard)
        if shard not in known or meta is None:
            plans.append(ShardPlan(shard, "new", fp))
        elif meta.get(FINGERPRINT) != fp:
            plans.append(ShardPlan(shard, "changed", fp, "source"))
        elif any(meta.get(k) != v for k, v in settings.items()):
            plans.append(ShardPlan(shard, "changed", fp, "settings"))
        else:
            plans.append(ShardPlan(shard, "unchanged", fp))
    for shard in sorted(known - set(fingerprints)):
        pinned = (synced.get(shard) or {}).get(FINGERPRINT) == ABSENT_FINGERPRINT
        plans.append(ShardPlan(shard, "removed", reason=ROLLED_BACK_REASON if pinned else ""))
    return plans


def plan_sync(instance: dg.DagsterInstance, source: Source, settings: Mapping[str, str]) -> list[ShardPlan]:
    """`plan_shards` for the source's listing and the instance's records (one listing, three queries)."""
    fingerprints = {shard: listing.fingerprint for shard, listing in source.list_shards().items()}
    known = set(instance.get_dynamic_partitions(shards.name))
    return plan_shards(fingerprints, known, latest_metadata(instance, VECTOR_INDEX_KEY), settings)
