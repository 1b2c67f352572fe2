"""Qdrant server mode: the settings, the collection it creates, and the refusals.

No Qdrant server can be installed on these machines (it is not on PyPI, Debian or npm), so the data
path runs on qdrant-client's in-process engine (same API), and what a server is *asked* is checked on
the wire: a loopback HTTP endpoint records the requests, as the ECS test does with moto.
"""

import json
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dagster as dg
import pytest
from qdrant_client import models

from rag_assets.defs.assets import SHARD_ASSETS
from rag_assets.config import Settings
from rag_assets.index import CollectionMismatch, Point, ServerIndex, point_id_for
from rag_assets.defs.resources import build_resources
from rag_assets.tables import CHUNKS, EMBEDDINGS, VECTOR_INDEX
from rag_assets_tests.conftest import make_env, write_corpus

REPLIES = {  # (method, path) -> Qdrant REST `result`
    ("GET", "/"): None,
    ("GET", "/collections/docs/exists"): {"exists": False},
    ("PUT", "/collections/docs"): True,
    ("PUT", "/collections/docs/index"): {"operation_id": 1, "status": "completed"},
}


@pytest.fixture
def replies():
    """What the recording server answers: REPLIES, which a test may extend."""
    return dict(REPLIES)


@pytest.fixture
def recorder(replies):
    seen: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def _reply(self):
            path = self.path.split("?")[0]
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append({"method": self.command, "path": path, "headers": dict(self.headers), "body": json.loads(body) if body else None})
            if path == "/":
                payload = {"title": "qdrant", "version": "1.20.0"}
            else:
                payload = {"result": replies[(self.command, path)], "status": "ok", "time": 0.0}
            data = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PUT = do_POST = _reply

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")  # qdrant.internal does not resolve here
def test_settings_reach_the_resource_and_the_api_key_stays_an_env_var(tmp_path, monkeypatch):
    make_env(
        tmp_path, monkeypatch, RAG_QDRANT_URL="https://qdrant.internal:6333", RAG_QDRANT_API_KEY="s3cr3t-key",
        RAG_QDRANT_PREFER_GRPC="true", RAG_QDRANT_GRPC_PORT="7334", RAG_QDRANT_BATCH_SIZE="128",
        RAG_QDRANT_PARALLEL="4", RAG_QDRANT_TIMEOUT="15",
    )
    qdrant = build_resources(Settings.from_env())["qdrant"]
    assert (qdrant.url, qdrant.prefer_grpc, qdrant.grpc_port, qdrant.batch_size, qdrant.parallel, qdrant.timeout) == (
        "https://qdrant.internal:6333", True, 7334, 128, 4, 15,
    )
    # The key is a reference to the variable, resolved at run time: it never lands in the run's config.
    assert qdrant.api_key == dg.EnvVar("RAG_QDRANT_API_KEY")
    remote = qdrant.model_copy(update={"api_key": "s3cr3t-key"}).alias_index().client._client._client  # retrying -> QdrantClient -> remote
    assert remote._prefer_grpc and remote._grpc_port == 7334 and remote._api_key == "s3cr3t-key"

    monkeypatch.setenv("RAG_QDRANT_PREFER_GRPC", "maybe")
    with pytest.raises(ValueError, match="RAG_QDRANT_PREFER_GRPC must be true or false"):
        Settings.from_env()


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection", "ignore:Failed to obtain server version")
def test_server_is_asked_for_the_right_collection_and_payload_indexes_with_the_api_key(recorder):
    url, seen = recorder
    with ServerIndex(url, "docs", api_key="k-123").session() as session:
        session.ensure_collection(384)
    calls = [(c["method"], c["path"]) for c in seen if c["path"] != "/"]
    assert calls[:2] == [("GET", "/collections/docs/exists"), ("PUT", "/collections/docs")]
    assert all(c["headers"].get("api-key") == "k-123" for c in seen)
    create = next(c["body"] for c in seen if (c["method"], c["path"]) == ("PUT", "/collections/docs"))
    assert create["vectors"] == {"size": 384, "distance": "Cosine"}
    indexes = {c["body"]["field_name"]: c["body"]["field_schema"] for c in seen if c["path"] == "/collections/docs/index"}
    assert indexes == {
        "shard": {"type": "keyword", "is_tenant": True},
        "model": {"type": "keyword", "is_tenant": False},
        "doc_id": {"type": "keyword", "is_tenant": False},
    }


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_a_hybrid_collection_and_query_as_the_server_is_asked_for_them(recorder, replies):
    from rag_assets.index import MIN_PREFETCH, RRF_K, TIE_DEPTH
    from rag_assets.sparse import SPARSE_VECTOR, SparseEncoder

    url, seen = recorder
    encoder = SparseEncoder()
    identity = {"model": "m@1", "chunker": "c", "sparse": encoder.key}
    index = ServerIndex(url, "docs")
    with index.session() as session:
        session.ensure_collection(384, identity)
    create = next(c["body"] for c in seen if (c["method"], c["path"]) == ("PUT", "/collections/docs"))
    # IDF is the server's: old points' weights stay valid as documents are added.
    assert create["sparse_vectors"] == {SPARSE_VECTOR: {"modifier": "idf"}}
    assert create["metadata"]["rag_identity"] == identity

    replies.update({("GET", "/collections/docs/exists"): {"exists": True}, ("POST", "/collections/docs/points/query"): {"points": []}})
    index._identities["docs"] = identity  # what the collection's metadata answers (asked once per process)
    seen.clear()
    words = encoder.query("max_connections")
    with index.session() as session:
        assert session.search([0.5] * 384, 5, "s1", words) == []
    (query,) = [c["body"] for c in seen if c["path"] == "/collections/docs/points/query"]
    assert query["query"] == {"rrf": {"k": RRF_K}} and query["limit"] == TIE_DEPTH * 5  # deeper than k: ties are broken by point id
    dense, sparse = query["prefetch"]
    shard = {"must": [{"key": "shard", "match": {"value": "s1"}}]}
    assert dense["query"] == [0.5] * 384 and dense["limit"] == MIN_PREFETCH and dense["filter"] == shard
    assert sparse == {"query": {"indices": words[0], "values": words[1]}, "using": SPARSE_VECTOR, "limit": MIN_PREFETCH, "filter": shard}


def test_upserts_in_batches_and_parallel_land_every_point():
    index = ServerIndex(":memory:", "batched", batch_size=7, parallel=2)
    points = [Point(point_id_for(f"c{i}"), [float(i % 5), 1.0, 0.5, 0.25], {"shard": f"s{i % 3}", "chunk_hash": str(i), "model": "m"})
              for i in range(100)]
    with index.session() as session:
        session.ensure_collection(4)
        session.upsert(points)
        session.upsert(points[:10])  # idempotent: the same ids are overwritten, not added
        assert session.count() == 100 and session.shard_counts() == {"s0": 34, "s1": 33, "s2": 33}
        assert dict(session.shard_points("s1").iter_rows()) == {p.id: p.payload["chunk_hash"] for p in points if p.payload["shard"] == "s1"}


@pytest.mark.parametrize(
    "existing, found",
    [
        (models.VectorParams(size=16, distance=models.Distance.COSINE), "16-d Cosine vectors"),
        (models.VectorParams(size=384, distance=models.Distance.EUCLID), "384-d Euclid vectors"),
        ({"text": models.VectorParams(size=384, distance=models.Distance.COSINE)}, "named or multiple vectors"),
    ],
)
def test_an_existing_collection_that_cannot_hold_the_models_vectors_is_refused(existing, found):
    index = ServerIndex(":memory:", f"existing_{abs(hash(found))}")
    index.client.create_collection(index.collection, vectors_config=existing)
    with index.session() as session, pytest.raises(CollectionMismatch) as err:
        session.ensure_collection(384)
    assert found in str(err.value) and "384-d cosine" in str(err.value) and "RAG_QDRANT_COLLECTION" in str(err.value)


@pytest.mark.filterwarnings("ignore:Failed to obtain server version")
def test_an_unreachable_server_is_retried_with_backoff_then_fails_clearly_and_iceberg_stays_consistent(tmp_path, monkeypatch, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = make_env(tmp_path, monkeypatch, RAG_QDRANT_URL=dead, RAG_QDRANT_RETRIES="3", RAG_QDRANT_RETRY_MAX_WAIT="1",
                   RAG_QDRANT_COLLECTION="retry_test")
    write_corpus(env.source)
    instance = env.instance()
    instance.add_dynamic_partitions("shards", ["beta"])
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="rag_assets.index"):
        result = dg.materialize(SHARD_ASSETS, partition_key="beta", instance=instance, resources=env.resources(), raise_on_error=False)
    assert not result.success and time.monotonic() - started > 1.5  # it waited between tries
    failure = next(e for e in result.all_events if e.is_step_failure and e.step_key == "vector_index")
    message = failure.step_failure_data.error.cause.message if failure.step_failure_data.error.cause else failure.step_failure_data.error.message
    assert f"Qdrant server {dead} unreachable" in message and "failed 4 times" in message
    assert [r.getMessage() for r in caplog.records if "retry" in r.getMessage()][-1].count("retry 3/3") == 1

    # Iceberg is consistent: the steps before the index committed, vector_index committed nothing.
    lake = env.resources()["iceberg"].lakehouse()
    assert lake.read_partition(EMBEDDINGS, "beta").num_rows == lake.read_partition(CHUNKS, "beta").num_rows > 0
    assert lake.read_partition(VECTOR_INDEX, "beta").num_rows == 0

    # The server is back (here: the in-process engine): the same partition completes without re-embedding.
    monkeypatch.setenv("RAG_QDRANT_URL", ":memory:")
    result = dg.materialize(SHARD_ASSETS, partition_key="beta", instance=instance, resources=env.resources())
    assert result.success
    embedded = next(m for m in result.get_asset_materialization_events() if m.asset_key == dg.AssetKey("embeddings"))
    assert embedded.materialization.metadata["embedded"].value == 0
    assert lake.read_partition(VECTOR_INDEX, "beta").num_rows == lake.read_partition(CHUNKS, "beta").num_rows
