"""The live vector collection, behind one small interface with two engines.

- `EdgeIndex`: the embedded qdrant-edge engine under RAG_HOME. One process at a time may open an
  edge shard (its WAL is locked), so every operation opens it under a file lock and closes it when
  done. Writes are fast (tens of thousands of points/s), so runs of different shards wait for each
  other only for the seconds their upserts take, never for a whole run.
- `ServerIndex`: a Qdrant server (or qdrant-client's in-process mode) through qdrant-client.

Every point carries `shard`, `chunk_hash` and `model` in its payload (keyword-indexed), which is what
lets a shard's points be listed, diffed, deleted, and checked against one model.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from rag_assets.faults import failpoint
from rag_assets.sparse import SPARSE_VECTOR, sparse_of

log = logging.getLogger(__name__)
POINT_NAMESPACE = uuid.UUID("6f1c54a4-8a51-4c3e-9f38-2b1d8f0b7a10")
INDEXED_FIELDS = ("shard", "model", "doc_id")
LIVE_POINTS = {"point_id": pl.String, "chunk_hash": pl.String}  # schema of `IndexSession.shard_points`
FACET_LIMIT = 1_000_000  # more distinct shards than any collection holds


def point_id_for(chunk_id: str) -> str:
    """Deterministic point id: the same chunk always lands on the same point."""
    return str(uuid.uuid5(POINT_NAMESPACE, chunk_id))


@dataclass(frozen=True)
class Point:
    id: str
    vector: Sequence[float]
    payload: dict
    sparse: tuple[Sequence[int], Sequence[float]] | None = None  # (indices, values) of the BM25 vector


SparseQuery = tuple[Sequence[int], Sequence[float]]
# Hybrid search fuses the best PREFETCH x k of each vector by reciprocal rank (k=RRF_K, the value of the
# RRF paper, given explicitly since the engines' defaults differ).
PREFETCH, MIN_PREFETCH, RRF_K = 4, 40, 60


TIE_DEPTH = 2  # a search asks the engine for TIE_DEPTH x k hits, so that `top_hits` can order ties


def top_hits(hits: Sequence[Hit], k: int) -> list[Hit]:
    """The first k hits by score, ties broken by point id. Scores tie often (in RRF, 1st in one list and 3rd in
    the other scores as 3rd and 1st; in BM25, repeated texts), and the engines order tied points differently
    from one process to the next: the same query must list the same hits in every mode and process."""
    return sorted(hits, key=lambda h: (-h.score, h.id))[:k]


def has_sparse(identity: dict | None) -> bool:
    """Whether a collection with this identity holds a sparse vector per point (rag_assets/sparse.py)."""
    return sparse_of(identity) != "none"


@dataclass(frozen=True)
class Hit:
    id: str
    score: float
    payload: dict


class CollectionMismatch(RuntimeError):
    """The existing collection cannot hold this model's vectors."""


DISTANCE = "cosine"  # the embedder L2-normalizes every vector, so cosine is the metric it was trained for


def check_collection(collection: str, found_dim: int | None, found_distance: str | None, dim: int) -> None:
    """Refuse an existing collection whose single unnamed vector is not `dim`-d under cosine distance."""
    if found_dim != dim or (found_distance or "").lower() != DISTANCE:
        found = f"{found_dim}-d {found_distance} vectors" if found_dim else "named or multiple vectors"
        raise CollectionMismatch(
            f"collection {collection!r} holds {found}, the model makes {dim}-d {DISTANCE} vectors; "
            "set RAG_QDRANT_COLLECTION to a new collection for this model"
        )


class VectorIndex:
    """One collection of one engine; the engine-level calls (aliases, other collections) are here, the
    data calls on an open `session()`. Aliases are the names applications query (rag_assets/aliases.py)."""

    collection: str

    def session(self) -> contextlib.AbstractContextManager[IndexSession]:  # pragma: no cover - interface
        raise NotImplementedError

    # Engine-level calls; each engine implements all of them (a missing one must fail, not answer None).
    def renamed(self, collection: str) -> VectorIndex:  # the same engine, another collection
        raise NotImplementedError

    def collection_exists(self, name: str) -> bool:
        raise NotImplementedError

    def collections(self) -> list[str]:
        raise NotImplementedError

    def identity(self, name: str) -> dict | None:  # what `ensure_collection` recorded about its points
        raise NotImplementedError

    def alias_target(self, alias: str) -> str | None:
        raise NotImplementedError

    def set_alias(self, alias: str, collection: str) -> None:  # atomic: readers see the old or the new target
        raise NotImplementedError

    def drop_collection(self, name: str) -> None:
        raise NotImplementedError

    def adopt(self, name: str, physical: str, identity: dict) -> None:  # a pre-alias collection becomes `physical`
        raise NotImplementedError


class IndexSession:
    """Operations on an open collection; obtained from `VectorIndex.session()`."""

    def ensure_collection(self, dim: int, identity: dict | None = None) -> None: ...
    def shard_points(self, shard: str) -> pl.DataFrame: ...  # point_id, chunk_hash of every point of `shard`
    def upsert(self, points: Sequence[Point]) -> None: ...
    def delete(self, ids: Sequence[str]) -> None: ...
    def delete_shard(self, shard: str) -> int: ...
    def count(self, shard: str | None = None, model: str | None = None, other_model: str | None = None) -> int: ...
    # Dense (`vector`), sparse (`sparse`) or, given both, hybrid: the two fused by reciprocal rank.
    def search(self, vector: Sequence[float] | None, k: int, shard: str | None = None, sparse: SparseQuery | None = None) -> list[Hit]: ...
    def exists(self) -> bool: ...
    def shard_counts(self) -> dict[str, int]: ...  # shard -> points, for every shard the collection holds

    @staticmethod
    def _hashes(page) -> pl.DataFrame:
        """point_id, chunk_hash over all scroll pages; `page(offset)` returns (records, next_offset). One
        page of records at a time is held as Python objects, the rest in a polars frame."""
        frames, offset = [], None
        while True:
            records, offset = page(offset)
            frames.append(pl.DataFrame(
                {"point_id": [str(r.id) for r in records], "chunk_hash": [(r.payload or {}).get("chunk_hash", "") for r in records]},
                schema=LIVE_POINTS,
            ))
            if offset is None:
                return pl.concat(frames)


# ---------------------------------------------------------------------------------------------------
# Embedded engine


class DiskFull(OSError):
    """Too little free space for the embedded engine: raised before it is opened, instead of the SIGBUS
    ("Bus error", no message) that a write into its memory-mapped files gets on a full disk."""


# The engine's files are sparse and memory-mapped (a new collection: ~152 MB apparent, ~0.5 MB on disk;
# measured): filling their holes must not fail, and new points need room beyond that.
NEW_COLLECTION_BYTES = 160 * 1024 * 1024


def _allocation(path: Path) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of the files under `path`."""
    apparent = allocated = 0
    for file in (p for p in path.rglob("*") if p.is_file()):
        st = file.stat()
        apparent, allocated = apparent + st.st_size, allocated + st.st_blocks * 512
    return apparent, allocated


def check_free_space(path: Path, headroom_mb: int) -> None:
    """Raise DiskFull unless the file system of `path` can back the engine's sparse files plus `headroom_mb`."""
    apparent, allocated = _allocation(path) if path.exists() else (NEW_COLLECTION_BYTES, 0)
    need = max(apparent - allocated, 0) + headroom_mb * 1024 * 1024
    existing = next(p for p in (path, *path.parents) if p.exists())  # a fresh home has no folder yet
    free = shutil.disk_usage(existing).free
    if free < need:
        raise DiskFull(f"disk full: need ~{need // 2**20} MB free under {path.parent} for the embedded Qdrant engine, "
                       f"{free // 2**20} MB free (RAG_MIN_FREE_MB={headroom_mb} of headroom for new points)")


COLLECTION_META = "rag_collection.json"  # embedded engine: dim, distance and identity of a collection's points


def _write_atomically(path: Path, text: str) -> None:
    """Write `path` so that a reader sees the old or the new content, never a part (rename is atomic)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class EdgeIndex(VectorIndex):
    """Collections are folders under `root`; an alias is a pointer file `<alias>.alias.json` beside them."""

    def __init__(self, root: Path, collection: str, batch_size: int = 512, lock_timeout: float = 600.0, min_free_mb: int = 256):
        self.root = Path(root)
        self.collection = collection
        self.path = self.root / collection
        self.batch_size = batch_size
        self.lock_timeout = lock_timeout
        self.min_free_mb = min_free_mb

    def renamed(self, collection: str) -> EdgeIndex:
        return EdgeIndex(self.root, collection, self.batch_size, self.lock_timeout, self.min_free_mb)

    def collection_exists(self, name: str) -> bool:
        return (self.root / name / "edge_config.json").exists()

    def collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "edge_config.json").exists()) if self.root.exists() else []

    def identity(self, name: str) -> dict | None:
        meta = self.root / name / COLLECTION_META
        return json.loads(meta.read_text()).get("identity") if meta.exists() else None

    def _alias_file(self, alias: str) -> Path:
        return self.root / f"{alias}.alias.json"

    def alias_target(self, alias: str) -> str | None:
        pointer = self._alias_file(alias)
        return json.loads(pointer.read_text())["collection"] if pointer.exists() else None

    def set_alias(self, alias: str, collection: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomically(self._alias_file(alias), json.dumps({"collection": collection}))

    def drop_collection(self, name: str) -> None:
        from filelock import FileLock

        with FileLock(str(self.root / name) + ".lock", timeout=self.lock_timeout):
            shutil.rmtree(self.root / name, ignore_errors=True)

    def adopt(self, name: str, physical: str, identity: dict) -> None:
        """Rename the folder (no point is copied) under the old collection's lock, so that no process of
        an earlier version writes into it meanwhile, then record the identity."""
        from filelock import FileLock

        with FileLock(str(self.root / name) + ".lock", timeout=self.lock_timeout):
            if self.collection_exists(name) and not (self.root / physical).exists():
                os.replace(self.root / name, self.root / physical)
        meta = self.root / physical / COLLECTION_META
        found = json.loads(meta.read_text()) if meta.exists() else {}
        _write_atomically(meta, json.dumps({**found, "identity": identity}))

    @contextlib.contextmanager
    def session(self) -> Iterator[EdgeSession]:
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=self.lock_timeout):
            check_free_space(self.path, self.min_free_mb)
            session = EdgeSession(self)
            try:
                yield session
            finally:
                session.close()


# Quantized vectors are searched first, then the best `OVERSAMPLING` x k are rescored with the float32
# vectors (both engines keep those on disk beside the quantized ones, which stay in RAM).
OVERSAMPLING = {"int8": 2.0, "binary": 4.0}


def quantization_of(identity: dict | None) -> str:
    """How a collection with this identity compresses its vectors: none | int8 | binary."""
    return (identity or {}).get("quantization") or "none"


def _edge_quantization(identity: dict | None):
    from qdrant_edge import BinaryQuantizationConfig, ScalarQuantizationConfig, ScalarType

    kind = quantization_of(identity)
    if kind == "int8":
        return ScalarQuantizationConfig(ScalarType.Int8, quantile=0.99, always_ram=True)
    if kind == "binary":
        return BinaryQuantizationConfig(always_ram=True)
    return None


def _edge_filter(shard: str | None = None, model: str | None = None, other_model: str | None = None):
    from qdrant_edge import FieldCondition, Filter, MatchValue

    must = [FieldCondition(k, match=MatchValue(v)) for k, v in (("shard", shard), ("model", model)) if v]
    must_not = [FieldCondition("model", match=MatchValue(other_model))] if other_model else None
    return Filter(must=must or None, must_not=must_not) if (must or must_not) else None


def _edge_vectors(point: Point):
    from qdrant_edge import SparseVector

    dense = list(map(float, point.vector))
    if point.sparse is None:
        return dense
    return {"": dense, SPARSE_VECTOR: SparseVector(list(point.sparse[0]), list(point.sparse[1]))}


class EdgeSession(IndexSession):
    def __init__(self, index: EdgeIndex):
        from qdrant_edge import EdgeShard

        self.index = index
        self.shard = EdgeShard.load(str(index.path)) if (index.path / "edge_config.json").exists() else None
        self.dirty = False

    def close(self) -> None:
        if self.shard is not None:
            if self.dirty:
                self.shard.optimize()  # builds HNSW once segments pass the indexing threshold
                self.shard.flush()
            self.shard.close()
            self.shard = None

    def exists(self) -> bool:
        return self.shard is not None

    def ensure_collection(self, dim: int, identity: dict | None = None) -> None:
        from qdrant_edge import Distance, EdgeConfig, EdgeShard, EdgeVectorParams, PayloadSchemaType, UpdateOperation

        meta = self.index.path / COLLECTION_META
        if self.shard is not None:
            if meta.exists():
                found = json.loads(meta.read_text())
                check_collection(self.index.collection, found["dim"], found.get("distance"), dim)
            return
        from qdrant_edge import EdgeSparseVectorParams, Modifier

        sparse = {SPARSE_VECTOR: EdgeSparseVectorParams(modifier=Modifier.Idf)} if has_sparse(identity) else None
        self.shard = EdgeShard.create(str(self.index.path), EdgeConfig(
            vectors=EdgeVectorParams(size=dim, distance=Distance.Cosine), sparse_vectors=sparse,
            quantization_config=_edge_quantization(identity),
        ))
        for name in INDEXED_FIELDS:
            self.shard.update(UpdateOperation.create_field_index(name, PayloadSchemaType.Keyword))
        _write_atomically(meta, json.dumps({"dim": dim, "distance": DISTANCE, **({"identity": identity} if identity else {})}))
        self.dirty = True

    def shard_points(self, shard: str) -> pl.DataFrame:
        from qdrant_edge import ScrollRequest

        if self.shard is None:
            return pl.DataFrame(schema=LIVE_POINTS)
        return self._hashes(
            lambda offset: self.shard.scroll(
                ScrollRequest(offset=offset, limit=4096, filter=_edge_filter(shard), with_payload=["chunk_hash"])
            )
        )

    def upsert(self, points: Sequence[Point]) -> None:
        from qdrant_edge import Point as EdgePoint
        from qdrant_edge import UpdateOperation

        for start in range(0, len(points), self.index.batch_size):
            batch = points[start : start + self.index.batch_size]
            self.shard.update(
                UpdateOperation.upsert_points([EdgePoint(p.id, _edge_vectors(p), p.payload) for p in batch])
            )
            self.dirty = True
            failpoint("index.upsert_batch")

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_edge import UpdateOperation

        if ids and self.shard is not None:
            for start in range(0, len(ids), self.index.batch_size):
                self.shard.update(UpdateOperation.delete_points(list(ids[start : start + self.index.batch_size])))
            self.dirty = True

    def delete_shard(self, shard: str) -> int:
        from qdrant_edge import UpdateOperation

        count = self.count(shard)
        if count:
            self.shard.update(UpdateOperation.delete_points_by_filter(_edge_filter(shard)))
            self.dirty = True
        return count

    def shard_counts(self) -> dict[str, int]:
        from qdrant_edge import FacetRequest

        if self.shard is None:
            return {}
        response = self.shard.facet(FacetRequest("shard", limit=FACET_LIMIT, exact=True))
        return {str(h.value): h.count for h in response.hits}

    def count(self, shard: str | None = None, model: str | None = None, other_model: str | None = None) -> int:
        from qdrant_edge import CountRequest

        if self.shard is None:
            return 0
        return self.shard.count(CountRequest(exact=True, filter=_edge_filter(shard, model, other_model)))

    def search(self, vector: Sequence[float] | None, k: int, shard: str | None = None, sparse: SparseQuery | None = None) -> list[Hit]:
        from qdrant_edge import Fusion, Prefetch, QuantizationSearchParams, Query, QueryRequest, SearchParams, SparseVector

        if self.shard is None:
            return []
        params = None
        if (kind := quantization_of(self.index.identity(self.index.collection))) != "none":
            params = SearchParams(quantization=QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING[kind]))
        dense = Query.Nearest(list(map(float, vector))) if vector is not None else None
        words = Query.Nearest(SparseVector(list(sparse[0]), list(sparse[1])), using=SPARSE_VECTOR) if sparse is not None else None
        where = _edge_filter(shard)
        if dense is not None and words is not None:
            limit = max(PREFETCH * k, MIN_PREFETCH)
            request = QueryRequest(limit=TIE_DEPTH * k, prefetches=[Prefetch(limit, dense, params=params, filter=where), Prefetch(limit, words, filter=where)],
                                   query=Fusion.Rrf(k=RRF_K), with_payload=True)
        else:
            request = QueryRequest(limit=TIE_DEPTH * k, query=dense or words, filter=where, with_payload=True, params=params if dense else None)
        return top_hits([Hit(str(r.id), float(r.score), dict(r.payload or {})) for r in self.shard.query(request)], k)


# ---------------------------------------------------------------------------------------------------
# Qdrant server (or qdrant-client's in-process mode for tests)


class IndexUnavailable(RuntimeError):
    """The Qdrant server did not answer, even after retries with backoff."""


def _transient(exc: BaseException) -> bool:
    """Connection failures, timeouts, 429 and 5xx: worth another try. Anything else is final."""
    from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

    if isinstance(exc, ResponseHandlingException):  # wraps httpx connect/read errors and timeouts
        return True
    if isinstance(exc, UnexpectedResponse):
        return exc.status_code in (429, 500, 502, 503, 504)
    try:
        import grpc

        if isinstance(exc, grpc.RpcError):
            return exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    except ImportError:  # pragma: no cover - grpc ships with qdrant-client
        pass
    return isinstance(exc, (ConnectionError, TimeoutError))


class _RetryingClient:
    """A QdrantClient whose calls retry transient failures with exponential backoff and jitter
    (tenacity), then raise IndexUnavailable naming the server, the attempts and the last error."""

    def __init__(self, client, url: str, attempts: int, max_wait: float):
        self._client, self._url, self._attempts, self._max_wait = client, url, attempts, max_wait

    def __getattr__(self, name: str):
        import tenacity

        call = getattr(self._client, name)
        if not callable(call):
            return call

        def before_sleep(state: tenacity.RetryCallState) -> None:
            log.warning(f"Qdrant {name} at {self._url} failed ({state.outcome.exception()!r}); "
                        f"retry {state.attempt_number}/{self._attempts - 1} in {state.next_action.sleep:.1f}s")

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_transient),
            stop=tenacity.stop_after_attempt(self._attempts),
            wait=tenacity.wait_exponential_jitter(initial=min(1.0, self._max_wait), max=self._max_wait),
            before_sleep=before_sleep,
            reraise=True,
        )

        def with_retries(*args, **kwargs):
            started = time.monotonic()
            try:
                return retrying(call, *args, **kwargs)
            except Exception as exc:
                if not _transient(exc):
                    raise
                raise IndexUnavailable(
                    f"Qdrant server {self._url} unreachable: {name} failed {self._attempts} times over "
                    f"{time.monotonic() - started:.0f}s; last error: {exc!r}"
                ) from exc

        return with_retries


@functools.lru_cache(maxsize=8)
def _client(location: str, api_key: str | None, prefer_grpc: bool, grpc_port: int, timeout: int):
    from qdrant_client import QdrantClient

    if location.startswith(("http://", "https://")):
        return QdrantClient(url=location, api_key=api_key, prefer_grpc=prefer_grpc, grpc_port=grpc_port, timeout=timeout)
    return QdrantClient(location=location)  # ":memory:" in tests


class ServerIndex(VectorIndex):
    """`parallel` > 1 uploads with that many worker processes (qdrant-client `upload_points`), for
    servers whose throughput grows with concurrent requests; every upload retries failed batches."""

    def __init__(
        self, url: str, collection: str, *, api_key: str | None = None, prefer_grpc: bool = False,
        grpc_port: int = 6334, batch_size: int = 256, parallel: int = 1, timeout: int = 60,
        retries: int = 5, max_retry_wait: float = 30.0,
    ):
        self.collection = collection
        self.client = _RetryingClient(_client(url, api_key, prefer_grpc, grpc_port, timeout), url, retries + 1, max_retry_wait)
        self.batch_size = batch_size
        self.parallel = parallel
        self._identities: dict[str, dict] = {}

    def renamed(self, collection: str) -> ServerIndex:
        other = object.__new__(ServerIndex)
        other.__dict__.update(self.__dict__, collection=collection)
        return other

    def collection_exists(self, name: str) -> bool:
        # An alias is not a collection (a server may also answer "exists" for one).
        return name in self.collections()

    def collections(self) -> list[str]:
        return sorted(c.name for c in self.client.get_collections().collections)

    def identity(self, name: str) -> dict | None:
        # A collection's identity never changes once recorded: asked once per process (search asks per query).
        if name in self._identities:
            return self._identities[name]
        if not self.collection_exists(name):
            return None
        found = ((self.client.get_collection(name).config.metadata or {}).get("rag_identity")) or None
        if found:
            self._identities[name] = found
        return found

    def alias_target(self, alias: str) -> str | None:
        return next((a.collection_name for a in self.client.get_aliases().aliases if a.alias_name == alias), None)

    def set_alias(self, alias: str, collection: str) -> None:
        from qdrant_client import models

        # One request: the server applies both operations atomically, so queries never miss the alias.
        operations = [models.CreateAliasOperation(create_alias=models.CreateAlias(collection_name=collection, alias_name=alias))]
        if self.alias_target(alias) is not None:
            operations.insert(0, models.DeleteAliasOperation(delete_alias=models.DeleteAlias(alias_name=alias)))
        self.client.update_collection_aliases(change_aliases_operations=operations)

    def drop_collection(self, name: str) -> None:
        self._identities.pop(name, None)
        if self.collection_exists(name):
            self.client.delete_collection(name)

    def adopt(self, name: str, physical: str, identity: dict) -> None:
        """A server cannot rename a collection, and an alias cannot take an existing collection's name: the
        points are copied with their vectors (no model call), then the old collection is deleted so that
        the alias can take its name (the caller sets it at once). Every step may be repeated."""
        if self.collection_exists(name):
            params = self.client.get_collection(name).config.params.vectors
            with self.renamed(physical).session() as target:
                target.ensure_collection(params.size, identity)
                offset = None
                while True:
                    records, offset = self.client.scroll(name, limit=1024, offset=offset, with_payload=True, with_vectors=True)
                    target.upsert([Point(str(r.id), r.vector, r.payload or {}) for r in records])
                    if offset is None:
                        break
            self.client.delete_collection(name)
        self.client.update_collection(physical, metadata={"rag_identity": identity})

    @contextlib.contextmanager
    def session(self) -> Iterator[ServerSession]:
        yield ServerSession(self)


def _server_quantization(identity: dict | None):
    from qdrant_client import models

    kind = quantization_of(identity)
    if kind == "int8":
        return models.ScalarQuantization(scalar=models.ScalarQuantizationConfig(type=models.ScalarType.INT8, quantile=0.99, always_ram=True))
    if kind == "binary":
        return models.BinaryQuantization(binary=models.BinaryQuantizationConfig(always_ram=True))
    return None


def _server_filter(shard: str | None = None, model: str | None = None, other_model: str | None = None):
    from qdrant_client import models

    must = [models.FieldCondition(key=k, match=models.MatchValue(value=v)) for k, v in (("shard", shard), ("model", model)) if v]
    must_not = [models.FieldCondition(key="model", match=models.MatchValue(value=other_model))] if other_model else None
    return models.Filter(must=must or None, must_not=must_not) if (must or must_not) else None


def _server_vectors(point: Point):
    from qdrant_client import models

    dense = list(map(float, point.vector))
    if point.sparse is None:
        return dense
    return {"": dense, SPARSE_VECTOR: models.SparseVector(indices=list(point.sparse[0]), values=list(point.sparse[1]))}


class ServerSession(IndexSession):
    def __init__(self, index: ServerIndex):
        self.index = index
        self.client = index.client
        self.name = index.collection

    def exists(self) -> bool:
        return self.client.collection_exists(self.name)

    def ensure_collection(self, dim: int, identity: dict | None = None) -> None:
        from qdrant_client import models

        if self.exists():
            params = self.client.get_collection(self.name).config.params.vectors
            if isinstance(params, models.VectorParams):
                check_collection(self.name, params.size, str(getattr(params.distance, "value", params.distance)), dim)
            else:
                check_collection(self.name, None, None, dim)
            return
        sparse = {SPARSE_VECTOR: models.SparseVectorParams(modifier=models.Modifier.IDF)} if has_sparse(identity) else None
        self.client.create_collection(self.name, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE),
                                      sparse_vectors_config=sparse, quantization_config=_server_quantization(identity),
                                      metadata={"rag_identity": identity} if identity else None)
        for name in INDEXED_FIELDS:
            # `shard` is the tenant key: a server lays each shard's points out together (is_tenant).
            schema = models.KeywordIndexParams(type=models.KeywordIndexType.KEYWORD, is_tenant=name == "shard")
            self.client.create_payload_index(self.name, name, schema, wait=True)

    def shard_points(self, shard: str) -> pl.DataFrame:
        if not self.exists():
            return pl.DataFrame(schema=LIVE_POINTS)
        return self._hashes(
            lambda offset: self.client.scroll(
                self.name, scroll_filter=_server_filter(shard), limit=4096, offset=offset, with_payload=["chunk_hash"]
            )
        )

    def upsert(self, points: Sequence[Point]) -> None:
        from qdrant_client import models

        if points:
            self.client.upload_points(
                self.name,
                (models.PointStruct(id=p.id, vector=_server_vectors(p), payload=p.payload) for p in points),
                batch_size=self.index.batch_size, parallel=self.index.parallel, max_retries=3, wait=True,
            )

    def delete(self, ids: Sequence[str]) -> None:
        from qdrant_client import models

        for start in range(0, len(ids), self.index.batch_size):
            self.client.delete(self.name, models.PointIdsList(points=list(ids[start : start + self.index.batch_size])), wait=True)

    def delete_shard(self, shard: str) -> int:
        from qdrant_client import models

        count = self.count(shard)
        if count:
            self.client.delete(self.name, models.FilterSelector(filter=_server_filter(shard)), wait=True)
        return count

    def shard_counts(self) -> dict[str, int]:
        if not self.exists():
            return {}
        response = self.client.facet(self.name, key="shard", limit=FACET_LIMIT, exact=True)
        return {str(h.value): h.count for h in response.hits}

    def count(self, shard: str | None = None, model: str | None = None, other_model: str | None = None) -> int:
        if not self.exists():
            return 0
        return self.client.count(self.name, count_filter=_server_filter(shard, model, other_model), exact=True).count

    def search(self, vector: Sequence[float] | None, k: int, shard: str | None = None, sparse: SparseQuery | None = None) -> list[Hit]:
        if not self.exists():
            return []
        from qdrant_client import models

        params = None
        if (kind := quantization_of(self.index.identity(self.name))) != "none":
            params = models.SearchParams(quantization=models.QuantizationSearchParams(rescore=True, oversampling=OVERSAMPLING[kind]))
        dense = list(map(float, vector)) if vector is not None else None
        words = models.SparseVector(indices=list(sparse[0]), values=list(sparse[1])) if sparse is not None else None
        where = _server_filter(shard)
        if dense is not None and words is not None:
            limit = max(PREFETCH * k, MIN_PREFETCH)
            response = self.client.query_points(
                self.name, limit=TIE_DEPTH * k, with_payload=True, query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
                prefetch=[models.Prefetch(query=dense, limit=limit, filter=where, params=params),
                          models.Prefetch(query=words, using=SPARSE_VECTOR, limit=limit, filter=where)],
            )
        else:
            response = self.client.query_points(
                self.name, query=dense if dense is not None else words, using=None if dense is not None else SPARSE_VECTOR,
                limit=TIE_DEPTH * k, query_filter=where, with_payload=True, search_params=params if dense is not None else None,
            )
        return top_hits([Hit(str(p.id), float(p.score), dict(p.payload or {})) for p in response.points], k)


def make_index(
    *, collection: str, path: str = "", url: str | None = None, api_key: str | None = None, prefer_grpc: bool = False,
    grpc_port: int = 6334, batch_size: int = 256, parallel: int = 1, timeout: int = 60, retries: int = 5,
    retry_max_wait: int = 30, min_free_mb: int = 256,
) -> VectorIndex:
    """The live collection: a Qdrant server when `url` is set, else the embedded engine under `path`
    (the options of `config.Settings.qdrant_options`)."""
    if url:
        return ServerIndex(
            url, collection, api_key=api_key, prefer_grpc=prefer_grpc, grpc_port=grpc_port, batch_size=batch_size,
            parallel=parallel, timeout=timeout, retries=retries, max_retry_wait=retry_max_wait,
        )
    return EdgeIndex(Path(path), collection, batch_size, min_free_mb=min_free_mb)
