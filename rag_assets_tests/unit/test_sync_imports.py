"""What `rag-assets sync` loads before it knows whether any shard has to run."""

import subprocess
import sys


def test_a_sync_with_nothing_to_run_does_not_import_the_assets_or_pyiceberg():
    code = ("import sys, rag_assets.cli, rag_assets.defs.resources, rag_assets.sync; "
            "print(sorted(m for m in ('pyiceberg', 'rag_assets.tables', 'rag_assets.defs.assets', 'rag_assets.defs.jobs', "
            "'rag_assets.maintenance') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True).stdout
    assert out.strip() == "[]"  # ~0.45 s of a ~2-3 s no-change process (benchmarks/RESULTS.md)


def test_the_report_counts_come_from_the_four_shard_assets():
    from rag_assets.defs.assets import SHARD_ASSETS
    from rag_assets.sync import COUNT_SOURCES

    assert {asset_key for asset_key, _ in COUNT_SOURCES.values()} == {asset.key for asset in SHARD_ASSETS}
