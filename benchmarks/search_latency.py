"""Search latency: a cold `rag-assets search` process against warm queries to `rag-assets serve`.

    rag-assets demo                                        # the demo collection (or any synced RAG_HOME)
    python benchmarks/search_latency.py --cold 5 --warm 200
    python benchmarks/search_latency.py --baseline /tmp/old  # also time the CLI of a checkout of an older
                                                            # commit (`git worktree add /tmp/old REV`)

Uses the environment's RAG_HOME / DAGSTER_HOME (the collection is only read). Cold: `rag-assets search
QUERY --json` as a fresh process, timed from outside (interpreter start, imports, model load, engine
open), `--cold` times each, interleaved with the baseline's. Warm: one `rag-assets serve` process on
loopback, `--warm` different queries over one HTTP keep-alive connection after one warm-up query, timed
by the client (HTTP, JSON, encode, engine open, search). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import requests

QUERIES = ["parse a JSON document", "open a socket connection", "format dates and times", "read a CSV file",
           "regular expression groups", "run a subprocess", "compress a file with gzip", "random numbers"]


def cold(cli: list[str], env: dict, cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run([*cli, "search", QUERIES[0], "-k", "5", "--json"], env=env, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - started


def warm(rounds: int) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cli = str(Path(sys.executable).with_name("rag-assets"))
    proc = subprocess.Popen([cli, "serve", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    started = time.perf_counter()
    try:
        while True:
            try:
                requests.get(f"{url}/health", timeout=5).raise_for_status()
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        ready = time.perf_counter() - started
        seconds = []
        with requests.Session() as http:
            http.get(f"{url}/search", params={"q": "warm up"}).raise_for_status()
            for i in range(rounds):
                t = time.perf_counter()
                http.get(f"{url}/search", params={"q": f"{QUERIES[i % len(QUERIES)]} {i}", "k": 5}).raise_for_status()
                seconds.append(time.perf_counter() - t)
    finally:
        proc.terminate()
        proc.wait(30)
    seconds.sort()
    return {"ready_seconds": round(ready, 2), "queries": rounds, "p50_ms": round(1000 * statistics.median(seconds), 1),
            "p95_ms": round(1000 * seconds[int(0.95 * (len(seconds) - 1))], 1), "max_ms": round(1000 * seconds[-1], 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", type=int, default=5)
    parser.add_argument("--warm", type=int, default=200)
    parser.add_argument("--baseline", type=Path, help="a checkout of an older commit whose CLI is timed too")
    args = parser.parse_args()
    ours = [sys.executable, "-m", "rag_assets.cli"]
    # `python -m` puts its working directory first on sys.path: each system runs from its own checkout.
    systems = {"current": (ours, dict(os.environ), Path(__file__).resolve().parents[1])}
    if args.baseline:
        systems["baseline"] = (ours, {**os.environ, "PYTHONPATH": str(args.baseline.resolve())}, args.baseline.resolve())
    times: dict[str, list[float]] = {name: [] for name in systems}
    for _ in range(args.cold):
        for name, (cli, env, cwd) in systems.items():
            times[name].append(cold(cli, env, cwd))
    result = {"cold_seconds": {name: {"median": round(statistics.median(t), 2), "all": [round(x, 2) for x in t]} for name, t in times.items()}}
    result["warm_http"] = warm(args.warm)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
