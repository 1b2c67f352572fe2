"""Where the seconds of a small edit go: one document edited in each shard, then `rag-assets sync`, with
each shard run taken apart from its own Dagster events.

    apt-get install postgresql-doc-15                      # the corpus: PostgreSQL's HTML documentation
    python benchmarks/edit_breakdown.py --pages 100 --shards 4 --backend onnx --rounds 3

The peers benchmark's corpus and edit (benchmarks/peers.py): `--pages` pages in `--shards` shards, one
sentence inserted into the middle paragraph of one page per shard. One full build and one no-change sync
first; then, `--rounds` times, the synced state is restored, the pages are edited and `rag-assets sync
--json` runs as a fresh process (interpreter start, imports and model load included), with RAG_SYNC_WORKERS=1
so the shard runs run one after another. For each shard run
the Dagster event log gives the time before its first step (the run's creation, planned events, start),
each step's span (STEP_START to STEP_SUCCESS: the asset body and its events) and the events written.
Prints one JSON object: the medians over the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import build_src, edit_shards, pick_pages, rag_env  # noqa: E402

CLI = str(Path(sys.executable).with_name("rag-assets"))


def timed_sync(env: dict) -> tuple[float, dict]:
    started = time.perf_counter()
    out = subprocess.run([CLI, "sync", "--json"], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        sys.exit(out.stderr[-3000:])
    return seconds, json.loads(out.stdout)


def run_parts(dagster_home: Path, runs: int) -> list[dict]:
    """Per shard run of the newest `runs` runs: seconds before the first step, per step, after the last."""
    code = f"""
import json, dagster as dg
from dagster._core.events import DagsterEventType as T
instance = dg.DagsterInstance.get()
out = []
for run in reversed(instance.get_runs(limit={runs})):
    logs = instance.all_logs(run.run_id)
    spans = {{}}
    for e in logs:
        if e.is_dagster_event and e.dagster_event_type in (T.STEP_START, T.STEP_SUCCESS, T.STEP_FAILURE):
            spans.setdefault(e.step_key, []).append(e.timestamp)
    first, last = min(v[0] for v in spans.values()), max(v[-1] for v in spans.values())
    out.append({{"shard": run.tags.get("dagster/partition"), "events": len(logs), "run": logs[-1].timestamp - logs[0].timestamp,
                "before_first_step": first - logs[0].timestamp, "after_last_step": logs[-1].timestamp - last,
                **{{step: v[-1] - v[0] for step, v in spans.items()}}}})
print(json.dumps(out))
"""
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home)}
    return json.loads(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pages", type=int, default=100)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--backend", default="onnx", choices=("torch", "onnx"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rag-edit-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "cache").mkdir()
        base, state, src = tmp / "base", tmp / "cache" / "x" / "state", tmp / "src"  # rag_env shares ../../models
        build_src(src, pick_pages(args.pages), args.shards)
        # One shard run after another in the CLI's process: the runs' spans add up to the time they took.
        env = {**rag_env(state, src, args.backend), "RAG_SYNC_WORKERS": "1"}
        full, _ = timed_sync(env)
        nochange, _ = timed_sync(env)
        shutil.copytree(state, base / "state")
        shutil.copytree(src, base / "src")
        rounds = []
        for _ in range(args.rounds):
            for name in ("state", "src"):
                target = state if name == "state" else src
                shutil.rmtree(target)
                shutil.copytree(base / name, target)
            edit_shards(src)
            seconds, report = timed_sync(env)
            assert report["totals"]["failed"] == 0 and report["totals"]["embedded"] > 0, report
            parts = run_parts(state / "dagster", args.shards)
            rounds.append({"seconds": seconds, "embedded": report["totals"]["embedded"],
                           "runs": sum(p["run"] for p in parts), "parts": parts})
        steps = [k for k in rounds[0]["parts"][0] if k not in ("shard", "events")]
        median = statistics.median
        result = {
            "pages": args.pages, "shards": args.shards, "backend": args.backend, "rounds": args.rounds,
            "full_build_seconds": round(full, 2), "no_change_seconds": round(nochange, 2),
            "edit_seconds": round(median(r["seconds"] for r in rounds), 2),
            "edit_embedded": rounds[0]["embedded"],
            "shard_runs_seconds": round(median(r["runs"] for r in rounds), 2),
            "outside_runs_seconds": round(median(r["seconds"] - r["runs"] for r in rounds), 2),
            "events_per_run": rounds[0]["parts"][0]["events"],
            # Median over rounds of the mean over shard runs (the first run also loads the model).
            "per_run_seconds": {k: round(median(statistics.mean(p[k] for p in r["parts"]) for r in rounds), 3) for k in steps},
            "first_run_seconds": {k: round(median(r["parts"][0][k] for r in rounds), 3) for k in steps},
            "edit_rounds_seconds": [round(r["seconds"], 2) for r in rounds],
        }
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
