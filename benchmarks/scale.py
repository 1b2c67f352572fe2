"""`rag-assets status` and a no-change `rag-assets sync` at 10, 100 and 1,000 shards.

    python benchmarks/scale.py --shards 10,100,1000

For each size, a fresh environment gets that many synced shards of two tiny documents each, written the
way a sync leaves them (rag_assets_tests/fabricate.py: every table, the embedded collection, the shard
partitions and the materializations the sensor compares against), without running the model. Then it
times, in this process, a no-change `run_sync` (the CLI's and the sensor's plan: every shard unchanged) and
`status`, each after one warm-up call, and counts the SQL statements they make (instance and catalog);
then the same two as commands (`python -m rag_assets.cli status --json`, `sync --json`: process start and
imports included), and with `--compare-with DIR` also the commands of another checkout's `rag_assets`
(e.g. `git archive 2e64089 rag_assets | tar -x -C /tmp/old`) on the same state.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_env import temp_rag_env

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(shards: int) -> dict:
    import dagster as dg
    import sqlalchemy

    from rag_assets.cli import _status
    from rag_assets.config import Settings
    from rag_assets.defs.resources import build_resources
    from rag_assets.sync import run_sync
    from rag_assets_tests.fabricate import synced_shards

    tmp = temp_rag_env(f"rag-scale-{shards}-")
    instance, resources = dg.DagsterInstance.get(), build_resources()
    started = time.perf_counter()
    synced_shards(tmp / "src", instance, resources, shards)
    setup = time.perf_counter() - started
    statements = {"n": 0}

    def count(*_args):
        statements["n"] += 1

    out = {"shards": shards, "setup_s": round(setup, 1)}
    for name, call in (("sync", lambda: run_sync(instance, resources)), ("status", lambda: _status(Settings.from_env()))):
        call()  # warm: tables loaded, connections open
        statements["n"] = 0
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", count)
        started = time.perf_counter()
        result = call()
        out[f"{name}_s"] = round(time.perf_counter() - started, 2)
        sqlalchemy.event.remove(sqlalchemy.engine.Engine, "before_cursor_execute", count)
        out[f"{name}_sql"] = statements["n"]
        if name == "sync":
            assert {r["status"] for r in result.as_json()["shards"].values()} == {"unchanged"}
        else:
            assert all(r["in_sync"] for r in result["shards"].values()) and len(result["shards"]) == shards
    for label, path in (("cli", None), ("before", COMPARE)):
        if label == "before" and not path:
            continue
        env = {**os.environ, "PYTHONPATH": path} if path else dict(os.environ)
        for command in ("sync", "status"):
            started = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "rag_assets.cli", command, "--json"], env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr[-2000:]
            out[f"{label}_{command}_s"] = round(time.perf_counter() - started, 2)
    return out


COMPARE: str | None = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", default="10,100,1000")
    parser.add_argument("--compare-with", default=None, help="a folder holding another version's rag_assets package")
    args = parser.parse_args()
    global COMPARE
    COMPARE = args.compare_with
    for n in (int(s) for s in args.shards.split(",")):
        r = measure(n)
        line = (f"shards={r['shards']:>5}  in-process: no-change sync {r['sync_s']:>5.2f} s ({r['sync_sql']} SQL), "
                f"status {r['status_s']:>5.2f} s ({r['status_sql']} SQL)  commands: sync {r['cli_sync_s']:>5.2f} s, "
                f"status {r['cli_status_s']:>5.2f} s")
        if COMPARE:
            line += f"  before: sync {r['before_sync_s']:>6.2f} s, status {r['before_status_s']:>6.2f} s"
        print(line + f"  [setup {r['setup_s']} s]", flush=True)


if __name__ == "__main__":
    main()
