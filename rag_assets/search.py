"""The query side: the model and the live collection, from the settings alone.

Used by `rag-assets search` (one query per process: it imports neither Dagster nor the tables, so a cold
search pays for the model and the engine only) and by `rag-assets serve` (the model loaded once, a query
then costs an encode and a search).
"""

from __future__ import annotations

import os

from rag_assets.config import SEARCH_MODES, Settings
from rag_assets.embedding import load_embedder, resolve_model
from rag_assets.aliases import live_index
from rag_assets.index import make_index
from rag_assets.sparse import encoder_for, query_vectors, sparse_of, usable_mode

MAX_K = 1000  # hits per search
# The embedded engine admits one process at a time; a writer holds it for the seconds a shard's upserts
# take. A query waits that long at most, then fails (a 503 from `serve`) rather than hang for minutes.
QUERY_LOCK_TIMEOUT = 15.0
HIT_FIELDS = ("shard", "doc_id", "chunk_id", "title", "text")  # payload fields a hit reports, after its score


class UnknownShard(LookupError):
    """`--shard` / `shard=` names a shard the collection does not hold."""


class Searcher:
    """Follows the alias: the collection it serves now, queried with that collection's own model (so a
    migration's switch needs no restart and no change of settings here)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.alias = make_index(**settings.qdrant_options(), api_key=os.environ.get("RAG_QDRANT_API_KEY") or None)
        if hasattr(self.alias, "lock_timeout"):  # the embedded engine
            self.alias.lock_timeout = QUERY_LOCK_TIMEOUT

    @property
    def index(self):
        return live_index(self.alias)

    def embedder_for(self, collection: str):
        """The model of `collection`'s points: the configured one when it is that model (its path is this
        host's), else the one the collection records."""
        options = self.settings.model_options()
        identity = self.alias.identity(collection)
        if identity and identity["model"] != resolve_model(options["model"], options["backend"]).key:
            options.update(model=identity["model_source"], backend=identity["backend"])
        return load_embedder(**options)

    @property
    def embedder(self):
        return self.embedder_for(self.index.collection)

    def answer(self, query: str, k: int = 5, shard: str | None = None, mode: str | None = None) -> dict:
        """{"query", "mode" (the one it ran in), "collection", "hits"}: the top-k chunks for `query`, each
        {"score", "shard", "doc_id", "chunk_id", "title", "text"}. `mode` (default RAG_SEARCH_MODE): dense,
        sparse (BM25) or hybrid (both, fused by reciprocal rank)."""
        mode = mode or self.settings.search_mode
        if not query.strip():
            raise ValueError("the query is empty")
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be between 1 and {MAX_K}, got {k}")
        if mode not in SEARCH_MODES:
            raise ValueError(f"mode must be one of {', '.join(SEARCH_MODES)}, got {mode!r}")
        index = self.index  # resolved once: the query is encoded as the collection it searches was
        identity = self.alias.identity(index.collection)
        mode = usable_mode(mode, identity, index.collection)
        embedder = self.embedder_for(index.collection) if mode != "sparse" else None  # BM25 alone loads no model
        ((vector, words),) = query_vectors([query], mode, embedder, encoder_for(sparse_of(identity)))
        with index.session() as session:
            hits = session.search(vector, k, shard, words)
            if shard is not None and not hits and not session.count(shard):
                raise UnknownShard(f"no shard {shard!r} in the collection (`rag-assets status` lists the shards)")
        return {"query": query, "mode": mode, "collection": index.collection,
                "hits": [{"score": h.score, **{f: h.payload.get(f) for f in HIT_FIELDS}} for h in hits]}

    def search(self, query: str, k: int = 5, shard: str | None = None, mode: str | None = None) -> list[dict]:
        """The hits of `answer`."""
        return self.answer(query, k, shard, mode)["hits"]

    def health(self) -> dict:
        """What a load balancer asks: the collection answers, with how many points, and the model."""
        index = self.index
        with index.session() as session:
            if not session.exists():
                raise LookupError(f"collection {self.alias.collection!r} does not exist (nothing synced into it yet?)")
            points = session.count()
        return {"status": "ok", "collection": self.alias.collection, "physical_collection": index.collection,
                "points": points, "model": self.embedder_for(index.collection).info.key}
