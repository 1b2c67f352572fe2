"""BM25 sparse vectors and dense / sparse / hybrid search, on the embedded engine and on qdrant-client's
in-process server mode."""

import uuid

import pytest

from rag_assets import aliases
from rag_assets.index import Point, make_index
from rag_assets.sparse import ModeUnavailable, SparseEncoder, encoder_for, sparse_of, usable_mode

ENCODER = SparseEncoder()
IDENTITY = {"model": "m@1", "model_source": "m", "backend": "torch", "chunker": "c", "chunk_tokens": 200,
            "chunk_overlap": 32, "sparse": ENCODER.key}


def test_the_encoder_tokenizes_stems_and_drops_stopwords_as_it_did_when_the_tables_were_written():
    # Pinned term ids: an upgrade of qdrant-edge that tokenized differently would silently stop queries from
    # matching the chunks encoded before it; it must fail here and become a new encoder version instead.
    indices, values = ENCODER.documents(["Set max_connections in postgresql.conf; connections are limited."])
    assert indices.to_pylist() == [[496808346, 520409122, 1030514789, 1067717801, 1223115691, 1590456296]]
    assert values.to_pylist()[0][4] > values.to_pylist()[0][0]  # "connections" twice: a higher tf weight
    assert ENCODER.query("max connection") == ([1030514789, 1223115691], [1.0, 1.0])  # stemmed alike: "connect"
    assert ENCODER.query("the of and") == ([], [])  # stopwords only


def test_keys_name_the_encoder_and_none_means_dense_only():
    assert encoder_for(ENCODER.key) == ENCODER and encoder_for("none") is None and encoder_for(None) is None
    assert encoder_for("bm25-v1:german").language == "german"
    with pytest.raises(ValueError, match="unknown sparse encoder"):
        encoder_for("splade:english")
    assert sparse_of({"model": "m"}) == "none"  # a collection made before sparse vectors
    dense_only = {**IDENTITY, "sparse": "none"}
    assert aliases.physical_name("docs", dense_only) == aliases.physical_name("docs", {k: v for k, v in IDENTITY.items() if k != "sparse"})
    assert aliases.physical_name("docs", IDENTITY) != aliases.physical_name("docs", dense_only)
    assert aliases.settings_for(IDENTITY)["RAG_SPARSE"] == "bm25" and aliases.settings_for(dense_only)["RAG_SPARSE"] == "none"


def test_hybrid_on_a_collection_without_sparse_vectors_is_dense_and_sparse_is_refused():
    assert usable_mode("hybrid", IDENTITY, "c") == "hybrid" and usable_mode("sparse", IDENTITY, "c") == "sparse"
    assert usable_mode("hybrid", {"model": "m"}, "c") == "dense" and usable_mode("dense", None, "c") == "dense"
    with pytest.raises(ModeUnavailable, match="migrate --sparse bm25"):
        usable_mode("sparse", {"model": "m"}, "c")


TEXTS = {  # dense vectors that rank by meaning; only one text holds the identifier the query names
    "a": ("tuning the number of client sessions the server accepts", [1.0, 0.0]),
    "b": ("the server setting max_connections and its default", [0.6, 0.8]),
    "c": ("server server server sessions", [0.0, 1.0]),
}


@pytest.fixture(params=["edge", "server"])
def collection(request, tmp_path):
    index = make_index(collection="docs__0123456789", path=str(tmp_path), url=":memory:" if request.param == "server" else None)
    indices, values = ENCODER.documents([t for t, _ in TEXTS.values()])
    with index.session() as session:
        session.ensure_collection(2, IDENTITY)
        session.upsert([Point(str(uuid.uuid5(uuid.NAMESPACE_URL, name)), vector, {"name": name, "shard": "s"}, (i, v))
                        for (name, (_, vector)), i, v in zip(TEXTS.items(), indices.to_pylist(), values.to_pylist())])
    return index


def names(session, dense, sparse, k=3, shard=None):
    return [h.payload["name"] for h in session.search(dense, k, shard, sparse)]


def test_dense_sparse_and_hybrid_search_in_both_engines(collection):
    query = ENCODER.query("max_connections sessions")
    with collection.session() as session:
        assert names(session, [1.0, 0.0], None) == ["a", "b", "c"]  # meaning only
        assert names(session, None, ENCODER.query("max_connections"), k=3) == ["b"]  # the exact word; others hold none
        # IDF by the engine: "sessions" is in two texts, "max"/"connections" in one, so those weigh more.
        assert names(session, None, query)[0] == "b"
        fused = session.search([1.0, 0.0], 3, None, query)
        assert [h.payload["name"] for h in fused][:2] in (["a", "b"], ["b", "a"])  # first of each list, fused
        assert all(0 < h.score < 1 for h in fused)  # reciprocal-rank scores
        assert names(session, [1.0, 0.0], query, shard="elsewhere") == []  # the shard filter applies to both


def test_sparse_weights_of_old_points_stay_valid_as_documents_are_added(collection):
    # The stored values are term frequencies only: a new document changes IDF at query time, not them.
    with collection.session() as session:
        before = names(session, None, ENCODER.query("default"))
        i, v = ENCODER.documents(["default default default defaults everywhere"])
        session.upsert([Point(str(uuid.uuid5(uuid.NAMESPACE_URL, "d")), [0.7, 0.7], {"name": "d", "shard": "s"},
                              (i.to_pylist()[0], v.to_pylist()[0]))])
        assert before == ["b"] and names(session, None, ENCODER.query("default")) == ["d", "b"]


def test_tied_scores_list_in_point_id_order():
    from rag_assets.index import Hit, top_hits

    hits = [Hit("c", 1 / 64, {}), Hit("b", 1 / 61 + 1 / 63, {}), Hit("a", 1 / 63 + 1 / 61, {}), Hit("d", 2 / 61, {})]
    assert [h.id for h in top_hits(hits, 3)] == ["d", "a", "b"]  # whatever order the engine gave the tie
    assert [h.id for h in top_hits(list(reversed(hits)), 3)] == ["d", "a", "b"]
