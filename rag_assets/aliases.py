"""The alias applications query, and the physical collections behind it.

`RAG_QDRANT_COLLECTION` (default `rag_chunks`) names an alias: a Qdrant alias on a server, a pointer file
`<alias>.alias.json` under RAG_HOME/qdrant on the embedded engine (replaced atomically, like a server's
alias switch). The collection it points at is named from the alias and what its points depend on, the
model and the chunker: `<alias>__<10 hex digits of sha256(model key, chunker key)>`; the identity itself
is recorded with the collection (Qdrant collection metadata; the embedded engine's rag_collection.json).

Syncs write into the live collection only while the configured model and chunker are its identity: a
different one is a migration (`rag-assets migrate`, rag_assets/migration.py) that builds the new
collection beside the live one and moves the alias when it is not worse. Search follows the alias and
embeds queries with the live collection's model, so it keeps answering right across a switch.

A deployment from before aliases has a collection named like the alias. It is adopted on the first sync
(the folder renamed on the embedded engine; the points copied with their vectors on a server, which
cannot rename), provided its points are of the configured model: nothing is embedded again.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from rag_assets.index import VectorIndex, quantization_of
from rag_assets.sparse import encoder_for, sparse_of

SEPARATOR = "__"


class IdentityConflict(RuntimeError):
    """The configured model or chunker is not the one of the collection the alias serves."""


def same_identity(a: dict, b: dict) -> bool:
    return (a["model"] == b["model"] and a["chunker"] == b["chunker"] and quantization_of(a) == quantization_of(b)
            and sparse_of(a) == sparse_of(b))


def physical_name(alias: str, identity: dict) -> str:
    # Float32, dense-only collections keep the name they had before quantization and sparse vectors were settings.
    extra = "" if quantization_of(identity) == "none" else f"\0{quantization_of(identity)}"
    extra += "" if sparse_of(identity) == "none" else f"\0sparse:{sparse_of(identity)}"
    digest = hashlib.sha256(f"{identity['model']}\0{identity['chunker']}{extra}".encode()).hexdigest()[:10]
    return f"{alias}{SEPARATOR}{digest}"


def describe(identity: dict | None) -> str:
    if not identity:
        return "an unrecorded model and chunker"
    vectors = "" if quantization_of(identity) == "none" else f", {quantization_of(identity)}-quantized vectors"
    sparse = ", no sparse vectors" if sparse_of(identity) == "none" else f", sparse vectors {sparse_of(identity)}"
    return f"model {identity['model']}, {identity['chunk_tokens']}-token chunks overlapping {identity['chunk_overlap']}{vectors}{sparse}"


def settings_for(identity: dict) -> dict[str, str]:
    """The settings that make `identity` the configured one."""
    return {"RAG_EMBED_MODEL": identity["model_source"], "RAG_EMBED_BACKEND": identity["backend"],
            "RAG_CHUNK_TOKENS": str(identity["chunk_tokens"]), "RAG_CHUNK_OVERLAP": str(identity["chunk_overlap"]),
            "RAG_QDRANT_QUANTIZATION": quantization_of(identity),
            **({"RAG_SPARSE": "bm25", "RAG_SPARSE_LANGUAGE": encoder.language} if (encoder := encoder_for(sparse_of(identity)))
               else {"RAG_SPARSE": "none"})}


@dataclass(frozen=True)
class Live:
    alias: str
    collection: str  # the physical collection queries reach
    identity: dict | None  # its model and chunker (None: nothing synced yet, or a collection from before aliases)


def live(index: VectorIndex) -> Live:
    """What the alias (`index.collection`) serves: its target, else a pre-alias collection of that name,
    else the name itself (nothing synced yet)."""
    alias = index.collection
    target = index.alias_target(alias) or alias
    return Live(alias, target, index.identity(target) if target != alias else None)


def live_index(index: VectorIndex) -> VectorIndex:
    """The physical collection behind the alias, for reading (status, search, reconcile, eval)."""
    return index.renamed(live(index).collection)


def conflict(index: VectorIndex, identity: dict) -> str | None:
    """Why a sync with `identity` must not write into what the alias serves, or None."""
    now = live(index)
    if now.identity is None and now.collection != now.alias:
        # The alias points at a collection that recorded nothing (a server that drops collection metadata):
        # whether it holds this model's points is unknown, so nothing is written into it.
        return (f"the alias {now.alias!r} serves {now.collection!r}, which records no model or chunker (does this "
                "Qdrant server keep collection metadata?); set RAG_QDRANT_COLLECTION to a new alias")
    if now.identity is not None:
        if same_identity(now.identity, identity):
            return None
        return (f"the alias {now.alias!r} serves {now.collection!r} ({describe(now.identity)}), but the configuration "
                f"says {describe(identity)}. A model, chunker, quantization or sparse encoder change is a migration: `rag-assets migrate` builds it "
                "beside the live collection and switches when it is not worse; or set the configuration back "
                f"({' '.join(f'{k}={v}' for k, v in settings_for(now.identity).items())}), or set RAG_QDRANT_COLLECTION "
                "to a new alias for a full re-embed from scratch.")
    if _is_legacy(index):
        if why := _legacy_conflict(index, identity):
            return why
        if sparse_of(identity) != "none":
            return (f"collection {now.alias!r} is from before aliases and has no sparse vectors, which RAG_SPARSE=bm25 "
                    "asks for: `rag-assets migrate` adopts it (nothing is embedded again) and builds the collection with "
                    "sparse vectors beside it; or set RAG_SPARSE=none to keep syncing it as it is.")
    return None


def _is_legacy(index: VectorIndex) -> bool:
    """Whether the alias's name is a collection from before aliases (and no alias yet)."""
    return index.alias_target(index.collection) is None and index.collection_exists(index.collection)


def _legacy_conflict(index: VectorIndex, identity: dict) -> str | None:
    with index.session() as session:
        foreign = session.count(other_model=identity["model"])
    if foreign:
        return (f"collection {index.collection!r} holds {foreign} points of another model than the configured "
                f"{identity['model']}; set the model back (then `rag-assets migrate`), or set RAG_QDRANT_COLLECTION "
                "to a new alias for a full re-embed from scratch.")
    return None


def adopt_legacy(index: VectorIndex, identity: dict) -> None:
    """Adopt the collection from before aliases named like the alias, if there is one, as the collection of
    `identity` without sparse vectors (its points have none: they came later). Rows of `vector_index` synced
    before name the alias as their collection: `adopted_from` says they stand for this one."""
    if not _is_legacy(index):
        return
    if why := _legacy_conflict(index, identity):
        raise IdentityConflict(why)
    adopted = {**identity, "sparse": "none", "adopted_from": index.collection}
    index.adopt(index.collection, physical_name(index.collection, adopted), adopted)
    publish(index, physical_name(index.collection, adopted))


def sync_target(index: VectorIndex, identity: dict) -> VectorIndex:
    """The physical collection a sync with `identity` writes into (the alias is `index.collection`); a
    collection from before aliases is adopted first. Raises IdentityConflict when `conflict` says why not.
    `publish` then points a new alias at it, once it exists."""
    if why := conflict(index, identity):
        raise IdentityConflict(why)
    adopt_legacy(index, identity)
    return index.renamed(physical_name(index.collection, identity))


def publish(index: VectorIndex, physical: str) -> None:
    """Point the alias at `physical` if it points nowhere yet and the collection exists (a server refuses an
    alias of a missing collection). Two first syncs may race here: both point it at the same collection."""
    alias = index.collection
    if index.alias_target(alias) is not None or not index.collection_exists(physical):
        return
    try:
        index.set_alias(alias, physical)
    except Exception:
        if index.alias_target(alias) != physical:
            raise


def switch(index: VectorIndex, physical: str) -> str:
    """Point the alias at `physical` (atomically); returns the collection it pointed at before."""
    before = live(index).collection
    index.set_alias(index.collection, physical)
    return before


def collections_of(index: VectorIndex) -> list[str]:
    """The alias's physical collections (`<alias>__` and ten hex digits: not another alias's that starts alike)."""
    pattern = re.compile(re.escape(index.collection + SEPARATOR) + "[0-9a-f]{10}")
    return [name for name in index.collections() if pattern.fullmatch(name)]


def others(index: VectorIndex) -> list[str]:
    """Physical collections of the alias that it does not point at (kept for a switch back)."""
    current = live(index).collection
    return [name for name in collections_of(index) if name != current]


def kept_models(index: VectorIndex) -> set[str]:
    """The models whose vectors the vector store keeps whole (`VectorStore.collect_garbage`): while the alias
    has more than one collection (a migration built one, or one is kept for a switch back), the models of
    all of them, since `embeddings` references only the configured model's current chunks, and after a
    switch not even those until the configuration follows. With one collection, nothing is kept beyond
    what `embeddings` references."""
    names = collections_of(index)
    if len(names) < 2:
        return set()
    return {identity["model"] for name in names if (identity := index.identity(name))}
