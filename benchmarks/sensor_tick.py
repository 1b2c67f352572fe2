"""Cost of a sensor tick that finds nothing changed, on a source of N files in S shards.

    python benchmarks/sensor_tick.py --files 10000 --shards 100
    python benchmarks/sensor_tick.py --files 10000 --shards 100 --store s3   # or gs, az: the same objects
        # in an emulator on loopback (moto, gcp-storage-emulator, Azurite: rag_assets_tests/emulators.py)

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
    parser.add_argument("--store", choices=("local", "s3", "gs", "az"), default="local")
    args = parser.parse_args()

    tmp = temp_rag_env("rag-tick-")
    per_shard = args.files // args.shards
    files = {f"shard-{s:03d}/doc-{i:04d}.md": f"# Doc {s}/{i}\n\nBody {i}.\n".encode()
             for s in range(args.shards) for i in range(per_shard)}
    emulator = None
    if args.store == "local":
        for path, body in files.items():
            (tmp / "src" / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp / "src" / path).write_bytes(body)
    else:
        emulator = upload(args.store, files, tmp)

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
        # Nothing changed: no shard run (the one retrieval_eval request for the index's state is allowed).
        assert not [r for r in result.run_requests if r.job_name != "retrieval_eval_job"], "a shard run was requested"
    if args.profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(sensor, dg.build_sensor_context(instance=instance, resources=resources))
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
    print(f"store={args.store} files={per_shard * args.shards} shards={args.shards} ticks={args.ticks} "
          f"median={statistics.median(times) * 1000:.0f} ms min={min(times) * 1000:.0f} ms max={max(times) * 1000:.0f} ms")
    if emulator:
        emulator.stop()


def upload(store: str, files: dict[str, bytes], tmp: Path):
    """Start the store's emulator, put `files` under <bucket>/corpus/ (16 at a time), point RAG_SOURCE there."""
    from concurrent.futures import ThreadPoolExecutor

    from rag_assets_tests import emulators

    if store == "s3":
        import boto3

        emulator = emulators.start_moto()
        os.environ.update(emulator.env)
        client = boto3.client("s3")
        client.create_bucket(Bucket="docs")
        put = lambda item: client.put_object(Bucket="docs", Key=f"corpus/{item[0]}", Body=item[1])  # noqa: E731
    elif store == "gs":  # loaded into the emulator before it serves: its uploads cost O(objects) each
        import json

        spec = tmp / "gcs-objects.json"
        spec.write_text(json.dumps({"bucket": "docs", "objects": {f"corpus/{k}": v.decode() for k, v in files.items()}}))
        emulator = emulators.start_gcs(preload=spec)
        os.environ.update(emulator.env)
        put = None
    else:
        emulator = emulators.start_azurite(tmp / "azurite")
        os.environ.update(emulator.env)
        fs = emulators.azure_filesystem(emulator)
        fs.mkdir("docs")
        put = lambda item: fs.pipe_file(f"docs/corpus/{item[0]}", item[1])  # noqa: E731
    if put:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, files.items()))
    os.environ["RAG_SOURCE"] = f"{store}://docs/corpus"
    return emulator


if __name__ == "__main__":
    main()
