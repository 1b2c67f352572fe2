import dagster as dg

from rag_assets_tests.conftest import write_corpus


def test_code_location_loads_with_partitioned_assets_checks_and_sensor(rag_env):
    from rag_assets.definitions import defs

    repo = defs.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"raw_documents", "chunks", "embeddings", "vector_index"}
    for key in keys:
        assert isinstance(repo.asset_graph.get(dg.AssetKey(key)).partitions_def, dg.DynamicPartitionsDefinition)
    assert {c.name for c in repo.asset_graph.asset_check_keys} == {"all_chunks_embedded", "index_matches_table"}
    assert defs.resolve_sensor_def("source_change_sensor")
    assert defs.resolve_job_def("shard_sync_job") and defs.resolve_job_def("remove_shard_job")
    spec = repo.assets_defs_by_key[dg.AssetKey("embeddings")]
    assert spec.op.tags.get("rag/gpu") == "true"


def test_sensor_requests_runs_for_new_shards_only_once(rag_env):
    from rag_assets.definitions import defs
    from rag_assets.sync import run_sync

    write_corpus(rag_env.source)
    instance = rag_env.instance()
    sensor = defs.resolve_sensor_def("source_change_sensor")
    result = sensor(dg.build_sensor_context(instance=instance, resources=rag_env.resources()))
    assert sorted(r.partition_key for r in result.run_requests) == ["alpha", "beta", "gamma"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["alpha", "beta", "gamma"]
    run_sync(instance, rag_env.resources())
    (rag_env.source / "alpha" / "bread.txt").write_text("Sourdough uses a wild yeast starter.\n")
    result = sensor(dg.build_sensor_context(instance=instance, resources=rag_env.resources()))
    assert [(r.partition_key, r.tags["rag/status"]) for r in result.run_requests] == [("alpha", "changed")]
