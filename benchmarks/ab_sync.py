"""One commit's `rag-assets sync` against the working tree's, on the peers benchmark's corpus and edit:
`--builds` full builds (each in a fresh home), then on the last homes `--rounds` times a no-change sync
and a small edit (one page edited in each shard). Each is a fresh `rag-assets sync --json` process with
the default RAG_SYNC_WORKERS, the two interleaved (their order alternates each round).

    apt-get install postgresql-doc-15                      # the corpus: PostgreSQL's HTML documentation
    python benchmarks/ab_sync.py --base cb7555b --backend torch --rounds 4

The base commit runs from a `git worktree` of it, in this venv: its CLI imports the worktree's
rag_assets instead of the editable install's. Both homes read one source folder, so they see the same
edits. Prints one JSON object: every figure, the medians and the working tree's time as a ratio of the base's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from peers import build_src, edit_shards, pick_pages, rag_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WRAPPER = """import sys
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]
sys.path.insert(0, {root!r})
import rag_assets
assert rag_assets.__file__.startswith({root!r}), rag_assets.__file__
from rag_assets.cli import run
sys.exit(run())
"""


def base_cli(rev: str, folder: Path) -> list[str]:
    """The command that runs `rev`'s CLI: its worktree's rag_assets in this interpreter."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(folder), rev], check=True, capture_output=True)
    script = folder.parent / "base_cli.py"
    script.write_text(WRAPPER.format(root=str(folder)))
    return [sys.executable, str(script)]


def timed_sync(cli: list[str], env: dict) -> dict:
    started = time.perf_counter()
    out = subprocess.run([*cli, "sync", "--json"], env=env, capture_output=True, text=True)
    seconds = round(time.perf_counter() - started, 2)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cli)} sync failed ({out.returncode}):\n{out.stderr[-4000:]}")
    totals = json.loads(out.stdout)["totals"]
    return {"seconds": seconds, "embedded": totals["embedded"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the commit to compare the working tree with")
    parser.add_argument("--backend", default="torch", choices=("torch", "onnx"))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--builds", type=int, default=1, help="full builds of each, interleaved, each in a fresh home")
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--shards", type=int, default=4)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="ab-sync-"))
    worktree = tmp / "base-worktree"
    try:
        clis = {"base": base_cli(args.base, worktree), "new": [str(Path(sys.executable).with_name("rag-assets"))]}
        src = tmp / "src"
        build_src(src, pick_pages(args.pages), args.shards)
        runs: dict = {name: {"full": [], "no change": [], "edit": []} for name in clis}
        for b in range(args.builds):
            envs = {}
            for name in (list(clis) if b % 2 == 0 else list(clis)[::-1]):
                # a home each; one model cache (tmp/models) for all, as peers.py shares one
                envs[name] = rag_env(tmp / f"homes-{b}" / name, src, args.backend)
                envs[name].pop("RAG_SYNC_WORKERS", None)
                runs[name]["full"].append(timed_sync(clis[name], envs[name]))
            print(f"build {b + 1}: " + ", ".join(f"{n} {runs[n]['full'][-1]['seconds']}s" for n in clis), file=sys.stderr)
        for r in range(args.rounds):
            order = list(clis) if r % 2 == 0 else list(clis)[::-1]
            for name in order:
                runs[name]["no change"].append(timed_sync(clis[name], envs[name]))
            edit_shards(src)
            for name in order:
                runs[name]["edit"].append(timed_sync(clis[name], envs[name]))
            print(f"round {r + 1}: " + ", ".join(f"{n} no change {runs[n]['no change'][-1]['seconds']}s edit "
                                                 f"{runs[n]['edit'][-1]['seconds']}s" for n in clis), file=sys.stderr)
        medians = {name: {phase: statistics.median(x["seconds"] for x in xs) for phase, xs in phases.items()}
                   for name, phases in runs.items()}
        ratios = {phase: round(medians["new"][phase] / medians["base"][phase], 3) for phase in medians["new"]}
        print(json.dumps({"base": args.base, "backend": args.backend, "runs": runs, "medians": medians,
                          "new / base": ratios}, indent=2))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
