import os

import dagster as dg

from rag_assets.defs.partitions import shards
from rag_assets_tests.conftest import write_corpus


def test_code_location_loads_with_partitioned_assets_checks_and_sensor(rag_env):
    from rag_assets.definitions import defs

    loaded = defs()
    repo = loaded.get_repository_def()
    keys = {k.to_user_string() for k in repo.asset_graph.get_all_asset_keys()}
    assert keys == {"raw_documents", "chunks", "embeddings", "vector_index", "retrieval_eval"}
    assert repo.asset_graph.get(dg.AssetKey("retrieval_eval")).partitions_def is None  # one figure for the collection
    keys -= {"retrieval_eval"}
    for key in keys:
        assert isinstance(repo.asset_graph.get(dg.AssetKey(key)).partitions_def, dg.DynamicPartitionsDefinition)
    assert {c.name for c in repo.asset_graph.asset_check_keys} == {"all_chunks_embedded", "index_matches_table", "recall_not_worse"}
    assert loaded.resolve_sensor_def("source_change_sensor")
    assert loaded.resolve_job_def("shard_sync_job") and loaded.resolve_job_def("remove_shard_job")
    spec = repo.assets_defs_by_key[dg.AssetKey("embeddings")]
    assert spec.op.tags.get("rag/gpu") == "true"
    assert all(repo.asset_graph.get(dg.AssetKey(key)).owners == ["team:rag"] for key in keys)  # shown in the catalog
    # One executor for every way of running a shard: a UI backfill's __ASSET_JOB runs in-process too.
    assert {job.name: job.executor_def.name for job in repo.get_all_jobs()} == {
        name: "in_process" for name in ("__ASSET_JOB", "shard_sync_job", "remove_shard_job", "reconcile_job", "maintenance_job",
                                        "retrieval_eval_job", "rollback_job", "migration_job")
    }
    # Checks are partitioned like their assets: each result belongs to a shard.
    assert {repo.asset_graph.get_check_spec(key).partitions_def for key in repo.asset_graph.asset_check_keys
            if key.asset_key.path[0] in keys} == {shards}


def test_sensor_requests_runs_for_new_shards_only_once(rag_env):
    from rag_assets.definitions import defs
    from rag_assets.sync import run_sync

    write_corpus(rag_env.source)
    instance = rag_env.instance()
    sensor = defs().resolve_sensor_def("source_change_sensor")
    result = sensor(dg.build_sensor_context(instance=instance, resources=rag_env.resources()))
    assert sorted(r.partition_key for r in result.run_requests) == ["alpha", "beta", "gamma"]
    assert result.dynamic_partitions_requests[0].partition_keys == ["alpha", "beta", "gamma"]
    run_sync(instance, rag_env.resources())
    (rag_env.source / "alpha" / "bread.txt").write_text("Sourdough uses a wild yeast starter.\n")
    result = sensor(dg.build_sensor_context(instance=instance, resources=rag_env.resources()))
    assert [(r.partition_key, r.tags["rag/status"]) for r in result.run_requests] == [("alpha", "changed")]


def test_vector_index_declares_every_table_it_reads():
    from rag_assets.definitions import defs

    graph = defs().get_repository_def().asset_graph
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("vector_index")).parent_keys}
    assert parents == {"embeddings", "chunks", "raw_documents"}  # vectors, chunk texts, document titles


def test_importing_the_code_location_reads_no_settings(tmp_path):
    """Settings are read when definitions load, not at import: a bad value fails the load with its name,
    and importing every module creates no folder."""
    import subprocess
    import sys

    code = (
        "import pkgutil, importlib, rag_assets, rag_assets.defs\n"
        "for m in pkgutil.walk_packages(rag_assets.__path__, 'rag_assets.'): importlib.import_module(m.name)\n"
        "from rag_assets.definitions import defs\n"
        "try:\n    defs()\nexcept Exception as e:\n    print('LOAD:', e, '| cause:', e.__cause__)\n"
    )
    home = tmp_path / "home"
    env = {**os.environ, "RAG_HOME": str(home), "RAG_SENSOR_INTERVAL_SECONDS": "soon"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("LOAD:") and "RAG_SENSOR_INTERVAL_SECONDS must be an integer, got 'soon'" in out.stdout
    assert not home.exists()


def test_sensor_and_schedule_are_built_from_the_settings(rag_env, monkeypatch):
    from rag_assets.definitions import defs

    monkeypatch.setenv("RAG_SENSOR_INTERVAL_SECONDS", "7")
    monkeypatch.setenv("RAG_RECONCILE_CRON", "15 4 * * *")
    monkeypatch.setenv("RAG_MAINTENANCE_CRON", "30 1 * * 0")
    loaded = defs()
    assert loaded.resolve_sensor_def("source_change_sensor").minimum_interval_seconds == 7
    assert loaded.resolve_schedule_def("reconcile_schedule").cron_schedule == "15 4 * * *"
    maintenance = loaded.resolve_schedule_def("maintenance_schedule")
    assert maintenance.cron_schedule == "30 1 * * 0" and maintenance.job_name == "maintenance_job"
    assert maintenance.default_status == dg.DefaultScheduleStatus.RUNNING


def test_dg_check_defs_passes(tmp_path):
    """Dagster's own project tooling loads the code location from `[tool.dg]` in pyproject.toml."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    dg_cli = Path(sys.executable).with_name("dg")
    env = {**os.environ, "RAG_HOME": str(tmp_path / "rag"), "VIRTUAL_ENV": sys.prefix, "DAGSTER_HOME": str(tmp_path)}
    out = subprocess.run([str(dg_cli), "check", "defs"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "All definitions loaded successfully" in out.stdout + out.stderr
