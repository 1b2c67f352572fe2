"""Dagster resources: the one place where settings turn into live clients.

Values come from `config.Settings` (environment variables) when definitions load, never at import;
secrets are passed as `dagster.EnvVar` (or as the names of the variables that hold them), so Dagster
resolves them at run time and never shows or logs them.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import TYPE_CHECKING

import dagster as dg

from rag_assets.chunking import Chunker, chunker_settings_key, load_chunker
from rag_assets.config import Settings
from rag_assets.embedding import ModelInfo, TextBatcher, embedder_options, load_embedder, resolve_model
from rag_assets.aliases import live_index
from rag_assets.index import VectorIndex, check_free_space, make_index
from rag_assets.parsing import RecordFields
from rag_assets.source import Source, open_source
from rag_assets.sparse import SparseEncoder, encoder_for, sparse_of

if TYPE_CHECKING:  # imported where used: a no-change `rag-assets sync` never loads pyiceberg (~0.3 s)
    from rag_assets.maintenance import RetentionPolicy
    from rag_assets.tables import Lakehouse


class SourceResource(dg.ConfigurableResource):
    """Where documents come from: RAG_SOURCE (a folder or s3://bucket/prefix), one sub-folder per shard."""

    location: str
    id_field: str = "_id"
    title_field: str = "title"
    text_field: str = "text"
    max_document_mb: int = 64  # larger files (decompressed too) are quarantined ("too_large") instead of read
    max_delete_fraction: float = 0.5  # the deletion guard (deletion_guard.py): RAG_MAX_DELETE_FRACTION

    def open(self) -> Source:
        return open_source(self.location)

    @property
    def fields(self) -> RecordFields:
        return RecordFields(self.id_field, self.title_field, self.text_field)


class IcebergResource(dg.ConfigurableResource):
    """pyiceberg catalog properties (SQL on SQLite by default; Postgres, Glue or REST by config)."""

    catalog_name: str = "rag"
    namespace: str = "rag"
    properties: dict[str, str]
    # Secret properties (a password in the URI, s3.secret-access-key, ...) by the variable that holds
    # them: read from the environment only here, so they never enter Dagster's config or snapshots.
    secret_env: dict[str, str] = {}

    def lakehouse(self) -> Lakehouse:
        from rag_assets.tables import Lakehouse

        missing = sorted(var for var in self.secret_env.values() if var not in os.environ)
        if missing:
            raise RuntimeError(f"Iceberg catalog settings {missing} are not set in this process's environment")
        secrets = {name: os.environ[var] for name, var in self.secret_env.items()}
        return Lakehouse(self.catalog_name, {**self.properties, **secrets}, self.namespace)


class ModelResource(dg.ConfigurableResource):
    """The embedding model, the chunker that counts tokens with the model's own tokenizer, and the sparse
    (BM25) encoder of the chunks (rag_assets/sparse.py)."""

    model: str
    backend: str = "torch"  # torch, or onnx (ONNX Runtime, CPU): part of the model's identity
    model_cache: str = ""  # where onnx exports are kept
    device: str = "auto"
    batch_size: int = 64
    batch_tokens: int = 0  # padded tokens per batch; 0 = by device
    chunk_tokens: int = 200
    chunk_overlap: int = 32
    sparse: str = "bm25"  # bm25 | none (RAG_SPARSE)
    sparse_language: str = "english"  # RAG_SPARSE_LANGUAGE

    def info(self) -> ModelInfo:
        return resolve_model(self.model, self.backend)

    def chunker_settings_key(self) -> str:
        """The chunker's identity (model, tokenizer, sizes) without loading the tokenizer."""
        return chunker_settings_key(self.info(), self.chunk_tokens, self.chunk_overlap)

    def chunker(self) -> Chunker:
        return load_chunker(self.info(), self.chunk_tokens, self.chunk_overlap)

    def embedder_options(self) -> tuple:
        """`embedding.load_embedder`'s arguments for this model."""
        return embedder_options(self.model, self.backend, self.device, self.batch_size, self.batch_tokens, self.model_cache)

    def embedder(self) -> TextBatcher:
        return load_embedder(*self.embedder_options())

    def sparse_encoder(self) -> SparseEncoder | None:
        return SparseEncoder(self.sparse_language) if self.sparse == "bm25" else None

    def identity(self) -> dict:
        """What a collection's points depend on (rag_assets/aliases.py): the model, the chunker and the sparse encoder."""
        encoder = self.sparse_encoder()
        return {"model": self.info().key, "model_source": self.model, "backend": self.backend,
                "chunker": self.chunker_settings_key(), "chunk_tokens": self.chunk_tokens, "chunk_overlap": self.chunk_overlap,
                "sparse": encoder.key if encoder else "none"}

    def with_identity(self, identity: dict) -> ModelResource:
        """This resource (device, batch sizes) for another model, chunker and sparse encoder, e.g. a migration's
        or a collection's."""
        encoder = encoder_for(sparse_of(identity))
        return ModelResource(**{**self.model_dump(), "model": identity["model_source"], "backend": identity["backend"],
                                "chunk_tokens": identity["chunk_tokens"], "chunk_overlap": identity["chunk_overlap"],
                                "sparse": "bm25" if encoder else "none",
                                "sparse_language": encoder.language if encoder else self.sparse_language})


class QdrantResource(dg.ConfigurableResource):
    """The live collection: a Qdrant server when `url` is set, else the embedded engine at `path`.
    `collection` is the alias applications query; `index()` is the physical collection behind it."""

    collection: str = "rag_chunks"  # the alias (rag_assets/aliases.py)
    path: str = ""  # embedded engine folder
    url: str | None = None
    api_key: str | None = None  # an EnvVar: resolved at run time, never shown in the UI
    prefer_grpc: bool = False
    grpc_port: int = 6334
    batch_size: int = 256
    parallel: int = 1
    timeout: int = 60
    retries: int = 5
    retry_max_wait: int = 30
    min_free_mb: int = 256  # embedded engine: free space required beyond its sparse files (RAG_MIN_FREE_MB)
    quantization: str = "none"  # none | int8 | binary (RAG_QDRANT_QUANTIZATION): part of a collection's identity

    def check_space(self) -> None:
        """Raise index.DiskFull when the embedded engine could not write (a server's disk is its own)."""
        if not self.url:
            check_free_space(self.index().path, self.min_free_mb)

    def alias_index(self) -> VectorIndex:
        """The alias itself (`aliases.sync_target`, migrations); its engine calls reach every collection."""
        options = self.model_dump(exclude={"quantization"})  # applied when a collection is made (its identity)
        if isinstance(self.api_key, dg.EnvVar):  # outside a run (the CLI's status), Dagster has not resolved it
            options["api_key"] = self.api_key.get_value()
        return make_index(**options)

    def index(self, collection: str = "") -> VectorIndex:
        """The physical collection the alias serves, or another collection of the same engine (`collection`)."""
        alias = self.alias_index()
        return alias.renamed(collection) if collection else live_index(alias)


def index_identity(model: ModelResource, qdrant: QdrantResource, quantization: str = "") -> dict:
    """What a physical collection's points depend on (rag_assets/aliases.py): the model, the chunker and how
    the collection compresses its vectors (`quantization`: another one than the configured)."""
    return {**model.identity(), "quantization": quantization or qdrant.quantization}


class EvalResource(dg.ConfigurableResource):
    """How `retrieval_eval` measures the collection (rag_assets/evaluation.py)."""

    queries_file: str = ""  # RAG_EVAL_QUERIES; "" = known-item queries generated from the corpus
    tolerance: float = 0.02  # RAG_EVAL_TOLERANCE
    size: int = 100  # RAG_EVAL_SIZE: known-item queries generated
    mode: str = "hybrid"  # RAG_SEARCH_MODE: the mode whose recall the check and a migration's gate judge


class RetentionResource(dg.ConfigurableResource):
    """How much history is kept (rag_assets/maintenance.py): snapshots (the reach of time travel and
    rollback), unreferenced files (a safety age), finished runs."""

    snapshot_retention_hours: int = 168
    orphan_age_hours: int = 72
    run_retention_days: int = 30

    def policy(self) -> RetentionPolicy:
        from rag_assets.maintenance import RetentionPolicy

        return RetentionPolicy(dt.timedelta(hours=self.snapshot_retention_hours), dt.timedelta(hours=self.orphan_age_hours),
                               dt.timedelta(days=self.run_retention_days))


def build_resources(settings: Settings | None = None) -> dict[str, dg.ConfigurableResource]:
    settings = settings or Settings.from_env()
    return {
        "source": SourceResource(location=settings.source, max_document_mb=settings.max_document_mb,
                                 max_delete_fraction=settings.max_delete_fraction),
        "iceberg": IcebergResource(
            catalog_name=settings.iceberg_catalog,
            namespace=settings.iceberg_namespace,
            properties=settings.iceberg_properties,
            secret_env=settings.iceberg_secret_env,
        ),
        "model": ModelResource(
            model=settings.embed_model,
            backend=settings.embed_backend,
            model_cache=str(settings.model_cache),
            device=settings.embed_device,
            batch_size=settings.embed_batch_size,
            batch_tokens=settings.embed_batch_tokens,
            chunk_tokens=settings.chunk_tokens,
            chunk_overlap=settings.chunk_overlap,
            sparse=settings.sparse,
            sparse_language=settings.sparse_language,
        ),
        "qdrant": QdrantResource(
            **settings.qdrant_options(),
            api_key=dg.EnvVar("RAG_QDRANT_API_KEY") if os.environ.get("RAG_QDRANT_API_KEY") else None,
            quantization=settings.qdrant_quantization,
        ),
        "eval_settings": EvalResource(queries_file=settings.eval_queries, tolerance=settings.eval_tolerance, size=settings.eval_size,
                                      mode=settings.search_mode),
        "retention": RetentionResource(
            snapshot_retention_hours=settings.snapshot_retention_hours,
            orphan_age_hours=settings.orphan_age_hours,
            run_retention_days=settings.run_retention_days,
        ),
    }


@dg.definitions
def resource_defs() -> dg.Definitions:
    return dg.Definitions(resources=build_resources(Settings.from_env()))
