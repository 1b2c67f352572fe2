"""What `rag-assets sync` loads before it knows whether any shard has to run."""

import json
import os
import subprocess
import sys

from rag_assets_tests.conftest import make_env

RUN_ONLY = ("pyiceberg", "rag_assets.tables", "rag_assets.defs.assets", "rag_assets.defs.jobs", "rag_assets.maintenance")


def test_a_sync_with_nothing_to_run_does_not_import_the_assets_or_pyiceberg(tmp_path, monkeypatch):
    """A whole `rag-assets sync` (instance, space check, liveness check, plan, 2 forked workers) on a source
    with no shards: none of what only a shard run needs is loaded (~0.45 s of a ~2-3 s no-change process,
    benchmarks/RESULTS.md "No change without the assets")."""
    make_env(tmp_path, monkeypatch, RAG_SYNC_WORKERS="2")
    code = ("import json, sys\nfrom rag_assets.cli import main\ntry:\n    main(['sync', '--json'])\nexcept SystemExit as exc:\n"
            f"    code = exc.code\nprint(json.dumps([code, sorted(m for m in {RUN_ONLY!r} if m in sys.modules)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-3000:]
    exit_code, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert exit_code == 0 and '"shards": {}' in out.stdout, out.stdout[-2000:]
    assert loaded == []


def test_the_report_counts_come_from_the_four_shard_assets():
    from rag_assets.defs.assets import SHARD_ASSETS
    from rag_assets.sync import COUNT_SOURCES

    assert {asset_key for asset_key, _ in COUNT_SOURCES.values()} == {asset.key for asset in SHARD_ASSETS}
