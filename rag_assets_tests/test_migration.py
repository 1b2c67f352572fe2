"""Migration behind the alias, on the embedded engine and on the server path (qdrant-client in-process):
a worse model is built, evaluated and refused, caught up with a sync made meanwhile, forced in, and then
replaced by the good model again without a model call; the old collection is dropped on request."""

import json
import math
import random
from pathlib import Path

import dagster as dg
import pytest
from click.testing import CliRunner

from rag_assets import aliases
from rag_assets.cli import main
from rag_assets.config import default_model
from rag_assets.defs.resources import index_identity
from rag_assets_tests.conftest import make_env

SYLLABLES = ["ka", "lo", "mi", "ner", "tu", "vas", "pel", "dor", "shi", "qua", "ben", "rix", "zo", "fa", "gul", "tem"]


def made_up_corpus(root: Path, shards: int = 3, docs: int = 14) -> None:
    """Documents of made-up words: each is found only by its own words, so a known-item query has one
    answer, and 42 of them make a recall@10 that a model which cannot tell texts apart does not reach."""
    rng = random.Random(11)

    def word() -> str:
        return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4)))

    for s in range(shards):
        (root / f"shard{s}").mkdir(parents=True, exist_ok=True)
        for d in range(docs):
            sentences = [" ".join(word() for _ in range(12)).capitalize() + "." for _ in range(6)]
            (root / f"shard{s}" / f"doc{d}.md").write_text(f"# {word().title()} {word()}\n\n" + " ".join(sentences) + "\n")


@pytest.fixture(scope="module")
def collapsed_model(tmp_path_factory) -> Path:
    """The packaged model with a rank-1 projection after its pooling: every vector is the same direction
    (up to its sign), so it cannot rank documents. A model that is worse, by construction."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as models

    folder = tmp_path_factory.mktemp("models") / "rag-test-collapsed"
    base = SentenceTransformer(default_model(), device="cpu")
    dense = models.Dense(384, 384, bias=False, activation_function=torch.nn.Identity())
    generator = torch.Generator().manual_seed(0)
    dense.linear.weight.data = torch.ones(384, 1) / math.sqrt(384) @ torch.randn(1, 384, generator=generator)
    SentenceTransformer(modules=[base[0], base[1], dense, models.Normalize()], device="cpu").save(str(folder))
    (folder / "README.md").write_text("# sentence-transformers/rag-test-collapsed\n")
    return folder


def cli_json(*args: str, code: int = 0) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == code, result.output
    return json.loads(result.stdout)


@pytest.fixture(params=["embedded", "server"])
def env(request, tmp_path, monkeypatch):
    extra = {"RAG_QDRANT_URL": ":memory:", "RAG_QDRANT_COLLECTION": f"migrating_{tmp_path.name[-8:]}"} if request.param == "server" else {}
    env = make_env(tmp_path, monkeypatch, RAG_EVAL_SIZE="40", **extra)
    made_up_corpus(env.source)
    return env


def test_a_worse_model_is_refused_caught_up_forced_and_replaced_without_re_embedding(env, collapsed_model):
    first = cli_json("sync")
    assert first["totals"]["failed"] == 0
    alias = env.resources()["qdrant"].alias_index()
    good = aliases.live(alias)
    status = cli_json("status")
    assert status["collection"] == alias.collection and status["physical_collection"] == good.collection
    assert good.collection == aliases.physical_name(alias.collection, index_identity(env.resources()["model"], env.resources()["qdrant"]))

    # 1. A worse model: built beside the live collection, evaluated on the same queries, refused.
    refused = cli_json("migrate", "--model", str(collapsed_model), code=1)
    assert refused["switched"] is False and "the alias stays" in refused["reason"]
    assert refused["from"] == good.collection and refused["to"] != good.collection
    old, new = refused["eval"]["old"], refused["eval"]["new"]
    assert old["query_set_id"] == new["query_set_id"] and old["queries"] == new["queries"] >= 30
    dense_old, dense_new = old["modes"]["dense"]["recall@10"], new["modes"]["dense"]["recall@10"]
    assert dense_old >= 0.6 and dense_new < dense_old - 0.3, (old, new)  # made-up words: 0.7 against 0.2
    # BM25 finds these known items alone, so hybrid does not tell the models apart: the gate judges every mode.
    assert old["mode"] == "hybrid" and "dense recall@10" in refused["reason"]
    chunks = sum(r["chunks"] for r in first["shards"].values())
    assert sum(r["points"] for r in refused["shards"].values()) == chunks
    assert all(r["rechunked"] for r in refused["shards"].values())  # another tokenizer name: another chunker
    assert aliases.live(alias).collection == good.collection  # still serving the good one
    assert cli_json("search", "anything")["hits"]

    # 2. The live alias keeps syncing; a second run builds only what changed since (and drops what left).
    (env.source / "shard0" / "doc0.md").write_text("# Kavas\n\n" + "Lomiqua tudor shiben rixzo faner gultem. " * 8)
    for doc in (env.source / "shard2").iterdir():
        doc.unlink()
    (env.source / "shard2").rmdir()
    synced = cli_json("sync", "--allow-deletes")
    assert synced["shards"]["shard0"]["status"] == "changed" and synced["shards"]["shard2"]["status"] == "removed"
    again = cli_json("migrate", "--model", str(collapsed_model), code=1)
    assert set(again["shards"]) == {"shard0"} and again["catch_up"]["removed"] == ["shard2"]
    assert again["shards"]["shard0"]["upserted"] >= 1 and again["switched"] is False

    # 3. --force switches; search follows the alias at once, with the collection's own model.
    forced = cli_json("migrate", "--model", str(collapsed_model), "--force")
    assert forced["switched"] and aliases.live(alias).collection == forced["to"]
    assert forced["settings"]["RAG_EMBED_MODEL"] == str(collapsed_model)
    health = CliRunner().invoke(main, ["status", "--json"])
    assert json.loads(health.stdout)["physical_collection"] == forced["to"]
    # The configuration still names the good model: syncs are refused until it names the live one.
    refused_sync = CliRunner().invoke(main, ["sync", "--json"])
    assert refused_sync.exit_code == 1 and "rag-assets migrate" in refused_sync.output

    # 4. Back to the configured model: every vector is in the store, no model call; the eval lets it in.
    back = cli_json("migrate")
    assert back["switched"] and back["to"] == good.collection
    assert all(r["embedded"] == 0 for r in back["shards"].values()), back["shards"]
    assert back["eval"]["new"]["modes"]["dense"]["recall@10"] > back["eval"]["old"]["modes"]["dense"]["recall@10"]
    assert cli_json("sync")["totals"]["failed"] == 0
    assert aliases.others(alias) == [forced["to"]]  # kept for a switch back
    dropped = cli_json("migrate", "--drop-old")
    assert dropped["reason"] == "already live" and dropped["dropped"] == [forced["to"]]
    assert aliases.others(alias) == [] and not alias.collection_exists(forced["to"])
    # Each `migrate` was a run of the project's migration_job, one step per shard it built, in the UI's history.
    runs = env.instance().get_runs(dg.RunsFilter(job_name="migration_job"))
    assert len(runs) == 5 and all(r.tags.get("rag/sync") == "cli" for r in runs)


def test_a_deployment_from_before_aliases_and_sparse_vectors_is_adopted_and_migrated_without_re_embedding(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch, RAG_SPARSE="none")  # what an earlier version built: dense vectors only
    made_up_corpus(env.source, shards=2, docs=4)
    first = cli_json("sync")
    # Make it what an earlier version left: a collection named like the alias, no pointer, no identity.
    alias = env.resources()["qdrant"].alias_index()
    physical = aliases.live(alias).collection
    (alias.root / "rag_chunks.alias.json").unlink()
    (alias.root / physical).rename(alias.root / "rag_chunks")
    meta = alias.root / "rag_chunks" / "rag_collection.json"
    meta.write_text(json.dumps({k: v for k, v in json.loads(meta.read_text()).items() if k != "identity"}))
    assert aliases.live(alias) == aliases.Live("rag_chunks", "rag_chunks", None)
    monkeypatch.delenv("RAG_SPARSE")  # the upgrade: sparse vectors by default
    assert cli_json("status")["physical_collection"] == "rag_chunks"  # read under its old name meanwhile
    assert cli_json("search", "anything")["mode"] == "dense"  # hybrid asked, dense answered: no sparse vectors there

    # A sync is refused before any run: the collection cannot hold sparse vectors. (With RAG_SPARSE=none the
    # sync adopts it as it is: test_aliases.)
    (env.source / "shard0" / "doc0.md").write_text("# Kavas\n\nLomiqua tudor shiben rixzo faner gultem.\n")
    refused = CliRunner().invoke(main, ["sync", "--json"])
    assert refused.exit_code == 1 and "from before aliases and has no sparse vectors" in refused.output
    # The migration adopts it (renamed, nothing embedded), builds the hybrid collection from the tables (vectors
    # from the store, BM25 from the chunk texts), and switches: hybrid is not worse than dense.
    migrated = cli_json("migrate")
    assert migrated["switched"] and migrated["from"] == physical and migrated["to"] != physical, migrated["reason"]
    assert all(r["embedded"] == 0 and r["reused"] > 0 for r in migrated["shards"].values()), migrated["shards"]
    assert migrated["eval"]["old"]["mode"] == "dense" and migrated["eval"]["new"]["mode"] == "hybrid"
    assert set(migrated["eval"]["new"]["modes"]) == {"dense", "sparse", "hybrid"} and set(migrated["eval"]["old"]["modes"]) == {"dense"}
    report = cli_json("sync")  # every shard once (the settings changed); only the edited document is embedded
    assert report["shards"]["shard0"]["status"] == "changed" and report["totals"]["embedded"] == 1, report
    status = cli_json("status")
    assert status["physical_collection"] == migrated["to"] and all(r["in_sync"] for r in status["shards"].values())
    assert all(r["points"] == r["chunks"] > 0 for r in status["shards"].values())  # every point came along
    assert first["totals"]["embedded"] == sum(r["chunks"] for r in first["shards"].values())  # (for contrast)
    hit = cli_json("search", "lomiqua tudor shiben", "--mode", "sparse")["hits"][0]
    assert hit["doc_id"] == "shard0/doc0.md"  # the edited document's made-up words, by BM25 alone
    assert cli_json("reconcile")["totals"]["extra"] == 0


def test_quantization_is_an_index_setting_of_its_own_collection(tmp_path, monkeypatch):
    env = make_env(tmp_path, monkeypatch, RAG_QDRANT_QUANTIZATION="binary")
    made_up_corpus(env.source, shards=1, docs=3)
    assert cli_json("sync")["totals"]["failed"] == 0
    resources = env.resources()
    identity = index_identity(resources["model"], resources["qdrant"])
    assert identity["quantization"] == "binary"
    assert cli_json("status")["physical_collection"] == aliases.physical_name("rag_chunks", identity)
    assert cli_json("search", "anything")["hits"]
    assert {r["status"] for r in cli_json("sync")["shards"].values()} == {"unchanged"}
    monkeypatch.delenv("RAG_QDRANT_QUANTIZATION")  # float32 configured, binary live: a migration, not a sync
    refused = CliRunner().invoke(main, ["sync", "--json"])
    assert refused.exit_code == 1 and "binary-quantized" in refused.output and "RAG_QDRANT_QUANTIZATION=binary" in refused.output


def test_a_text_repeated_across_build_batches_is_embedded_once(tmp_path, monkeypatch):
    import rag_assets.migration

    env = make_env(tmp_path, monkeypatch)
    made_up_corpus(env.source, shards=1, docs=2)
    (env.source / "shard0" / "twin.md").write_text((env.source / "shard0" / "doc0.md").read_text())  # the same text
    first = cli_json("sync")
    assert first["totals"]["failed"] == 0, first
    monkeypatch.setattr(rag_assets.migration, "BATCH", 1)  # every chunk a batch of its own
    report = cli_json("migrate", "--chunk-tokens", "40")
    (row,) = report["shards"].values()
    with env.resources()["qdrant"].index(report["to"]).session() as session:
        hashes = session.shard_points("shard0")["chunk_hash"]
    assert row["points"] == hashes.len() > hashes.n_unique()  # the twin's chunks repeat doc0's
    assert row["embedded"] == hashes.n_unique(), row  # each text once, although its repeat came in a later batch
