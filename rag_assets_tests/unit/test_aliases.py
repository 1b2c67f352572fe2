"""Aliases over physical collections, on the embedded engine and on qdrant-client's in-process server mode."""

import uuid

import pytest

from rag_assets import aliases
from rag_assets.index import EdgeIndex, Point, make_index

M1 = {"model": "m1@a", "model_source": "m1", "backend": "torch", "chunker": "c200", "chunk_tokens": 200, "chunk_overlap": 32}
M2 = {**M1, "model": "m2@b", "model_source": "m2"}
SMALLER = {**M1, "chunker": "c80", "chunk_tokens": 80}


@pytest.fixture(params=["edge", "server"])
def alias(request, tmp_path):
    if request.param == "edge":
        return make_index(collection="docs", path=str(tmp_path / "qdrant"))
    return make_index(collection=f"docs{uuid.uuid4().hex[:6]}", url=":memory:")


def fill(index, identity: dict, n: int = 3) -> None:
    with index.session() as session:
        session.ensure_collection(2, identity)
        session.upsert([Point(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{index.collection}{i}")), [1.0, float(i)],
                              {"shard": "s", "model": identity["model"], "chunk_hash": f"h{i}"}) for i in range(n)])


def test_the_physical_name_follows_the_model_and_the_chunker():
    names = {aliases.physical_name("docs", i) for i in (M1, M2, SMALLER)}
    assert len(names) == 3 and all(n.startswith("docs__") and len(n) == len("docs__") + 10 for n in names)
    assert aliases.physical_name("docs", dict(M1)) == aliases.physical_name("docs", M1)


def test_a_first_sync_points_the_alias_and_another_identity_is_refused(alias):
    assert aliases.live(alias) == aliases.Live(alias.collection, alias.collection, None)
    assert aliases.conflict(alias, M1) is None
    target = aliases.sync_target(alias, M1)
    assert target.collection == aliases.physical_name(alias.collection, M1)
    aliases.publish(alias, target.collection)  # nothing there yet: a server could not alias it
    assert alias.alias_target(alias.collection) is None
    fill(target, M1)
    aliases.publish(alias, target.collection)
    assert aliases.live(alias) == aliases.Live(alias.collection, target.collection, M1)
    assert aliases.live_index(alias).collection == target.collection
    for other in (M2, SMALLER):
        why = aliases.conflict(alias, other)
        assert "rag-assets migrate" in why and "RAG_CHUNK_TOKENS=200" in why and "RAG_EMBED_MODEL=m1" in why
        with pytest.raises(aliases.IdentityConflict):
            aliases.sync_target(alias, other)


def test_a_switch_is_one_step_and_the_old_collection_stays_until_dropped(alias):
    first, second = (alias.renamed(aliases.physical_name(alias.collection, i)) for i in (M1, M2))
    fill(first, M1, 3)
    aliases.publish(alias, first.collection)
    assert aliases.kept_models(alias) == set()  # one collection: the store collects garbage as usual
    fill(second, M2, 5)
    assert aliases.others(alias) == [second.collection]
    assert aliases.kept_models(alias) == {"m1@a", "m2@b"}  # a migration's: both kept whole
    assert aliases.switch(alias, second.collection) == first.collection
    assert aliases.live(alias).identity == M2 and aliases.conflict(alias, M2) is None and aliases.conflict(alias, M1)
    with aliases.live_index(alias).session() as session:
        assert session.count() == 5
    assert aliases.others(alias) == [first.collection]
    alias.drop_collection(first.collection)
    assert aliases.others(alias) == [] and not alias.collection_exists(first.collection)
    # Another alias whose name starts alike is not one of this alias's collections.
    fill(alias.renamed(alias.collection + "__other__" + "0" * 10), M1, 1)
    assert aliases.others(alias) == []


def test_a_collection_from_before_aliases_is_adopted_without_re_embedding(alias):
    legacy = alias.renamed(alias.collection)
    fill(legacy, {**M1, "chunker": "?"}, 4)  # recorded no identity before aliases: the points say the model
    if isinstance(alias, EdgeIndex):
        (alias.path / "rag_collection.json").write_text('{"dim": 2, "distance": "cosine"}')
    else:
        alias.client.update_collection(alias.collection, metadata={"rag_identity": None})
    assert aliases.live(alias).collection == alias.collection  # search reads it under its old name meanwhile
    assert "2 points of another model" not in (aliases.conflict(alias, M2) or "")
    assert "4 points of another model" in aliases.conflict(alias, M2)
    target = aliases.sync_target(alias, M1)
    # Recorded as adopted: the rows synced before aliases name the alias and stand for this collection.
    # Its points have no sparse vectors: the adopted identity says so.
    assert aliases.live(alias) == aliases.Live(alias.collection, target.collection,
                                               {**M1, "sparse": "none", "adopted_from": alias.collection})
    assert not alias.collection_exists(alias.collection)
    with target.session() as session:
        assert session.count(model="m1@a") == 4
    assert aliases.sync_target(alias, M1).collection == target.collection  # once only


def test_adopting_a_collection_from_before_sparse_vectors_leads_to_a_migration(alias):
    fill(alias.renamed(alias.collection), M1, 2)
    hybrid = {**M1, "sparse": "bm25-v1:english"}
    with pytest.raises(aliases.IdentityConflict, match="no sparse vectors.*rag-assets migrate"):
        aliases.sync_target(alias, hybrid)
    assert aliases.live(alias) == aliases.Live(alias.collection, alias.collection, None)  # refused: nothing changed
    # The migration adopts it first, as the dense-only collection it is (nothing embedded again).
    aliases.adopt_legacy(alias, hybrid)
    live = aliases.live(alias)
    assert live.identity["sparse"] == "none" and live.collection == aliases.physical_name(alias.collection, {**M1, "sparse": "none"})
    assert "RAG_SPARSE=none" in aliases.conflict(alias, hybrid)


@pytest.mark.parametrize("kind", ["int8", "binary"])
def test_quantization_is_part_of_the_identity_and_search_rescores(alias, kind):
    quantized = {**M1, "quantization": kind}
    assert aliases.physical_name(alias.collection, {**M1, "quantization": "none"}) == aliases.physical_name(alias.collection, M1)
    assert aliases.physical_name(alias.collection, quantized) != aliases.physical_name(alias.collection, M1)
    target = alias.renamed(aliases.physical_name(alias.collection, quantized))
    fill(target, quantized, 5)
    aliases.publish(alias, target.collection)
    assert f"{kind}-quantized vectors" in aliases.conflict(alias, M1)
    assert aliases.conflict(alias, quantized) is None
    with aliases.live_index(alias).session() as session:
        hits = session.search([1.0, 4.0], 2)
    assert [h.payload["chunk_hash"] for h in hits] == ["h4", "h3"]  # rescored with the float32 vectors


def test_an_alias_to_a_collection_without_an_identity_is_a_conflict(alias):
    bare = alias.renamed(alias.collection + "__" + "0" * 10)
    fill(bare, M1, 1)
    if isinstance(alias, EdgeIndex):
        (bare.path / "rag_collection.json").write_text('{"dim": 2, "distance": "cosine"}')
    else:
        alias.client.update_collection(bare.collection, metadata={"rag_identity": None})
        alias._identities.clear()
    alias.set_alias(alias.collection, bare.collection)
    assert "records no model or chunker" in aliases.conflict(alias, M1)
