"""Cost of a sensor tick that finds nothing changed, on a source of N files in S shards.

    python benchmarks/sensor_tick.py --files 10000 --shards 100

Builds the source under a temp folder, records every shard as synced (a vector_index
materialization carrying the shard's current fingerprint, which is the state a real sync leaves),
then evaluates the real sensor several times and reports the tick times.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from bench_env import temp_rag_env


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--shards", type=int, default=100)
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--profile", action="store_true", help="print where one tick spends its time")
    args = parser.parse_args()

    tmp = temp_rag_env("rag-tick-")
    per_shard = args.files // args.shards
    for s in range(args.shards):
        folder = tmp / "src" / f"shard-{s:03d}"
        folder.mkdir(parents=True)
        for i in range(per_shard):
            (folder / f"doc-{i:04d}.md").write_text(f"# Doc {s}/{i}\n\nBody {i}.\n")

    import dagster as dg

    from rag_assets.defs.assets import vector_index
    from rag_assets.defs.partitions import shards
    from rag_assets.defs.resources import build_resources
    from rag_assets.definitions import defs
    from rag_assets.shard_state import index_settings
    from rag_assets.source import open_source

    instance = dg.DagsterInstance.get()
    resources = build_resources()
    listings = open_source(os.environ["RAG_SOURCE"]).list_shards()
    instance.add_dynamic_partitions(shards.name, list(listings))
    settings = index_settings(resources["model"], resources["qdrant"])
    for name, listing in listings.items():
        instance.report_runless_asset_event(
            dg.AssetMaterialization(
                vector_index.key, partition=name, metadata={"source_fingerprint": listing.fingerprint, **settings}
            )
        )
    sensor = defs().resolve_sensor_def("source_change_sensor")
    times = []
    for _ in range(args.ticks):
        started = time.perf_counter()
        result = sensor(dg.build_sensor_context(instance=instance, resources=resources))
        times.append(time.perf_counter() - started)
        assert not result.run_requests, "nothing changed, nothing may be requested"
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(sensor, dg.build_sensor_context(instance=instance, resources=resources))
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    print(f"files={per_shard * args.shards} shards={args.shards} ticks={args.ticks} "
          f"median={statistics.median(times) * 1000:.0f} ms min={min(times) * 1000:.0f} ms max={max(times) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
