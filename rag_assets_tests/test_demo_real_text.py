"""Real text: the demo corpus (Python stdlib docs) through the CLI, as `make demo` runs it."""

import json
import shutil

from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets import demo
from rag_assets.demo import DEMO_SHARDS, build_demo_source


def test_demo_source_syncs_and_answers_questions(rag_env, monkeypatch):
    written = build_demo_source(rag_env.source)
    assert written >= 40 and sorted(p.name for p in rag_env.source.iterdir()) == sorted(DEMO_SHARDS)
    assert build_demo_source(rag_env.source) == written  # idempotent

    def two_shards(root):  # keep the suite fast: two shards of real documentation
        count = build_demo_source(root)
        for shard in DEMO_SHARDS:
            if shard not in ("data", "numbers"):
                shutil.rmtree(root / shard)
        return count

    monkeypatch.setattr(demo, "build_demo_source", two_shards)
    result = CliRunner().invoke(main, ["demo", "--query", "serialize Python objects to a JSON string"])  # `make demo`
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "search (hybrid): serialize Python objects to a JSON string" in lines
    assert any(line.startswith(("1. ", "2. ", "3. ")) and "[data] data/json.md" in line for line in lines), result.output
    for query, doc in [("serialize Python objects to a JSON string", "data/json.md"),
                       ("mean, median and standard deviation of a sample", "numbers/statistics.md"),
                       ("shuffle a list and pick random numbers", "numbers/random.md"),
                       ("exact decimal floating point arithmetic for money", "numbers/decimal.md")]:
        hits = json.loads(CliRunner().invoke(main, ["search", query, "-k", "5", "--json"]).stdout)["hits"]
        assert doc in [h["doc_id"] for h in hits], (query, [h["doc_id"] for h in hits])
    again = json.loads(CliRunner().invoke(main, ["sync", "--json"]).stdout)
    assert set(again["shards"]) == {"data", "numbers"}
    assert {r["status"] for r in again["shards"].values()} == {"unchanged"} and again["totals"]["embedded"] == 0
    assert again["totals"]["chunks"] > 200 and again["totals"]["quarantined"] == 0


def test_the_demo_source_is_the_same_in_every_process():
    """pydoc prints default values with their memory address; the demo strips them, so a second
    `rag-assets demo` finds its documents unchanged instead of re-embedding some chunks."""
    import subprocess
    import sys

    code = "from rag_assets.demo import module_markdown; print(module_markdown('configparser'))"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout for _ in range(2)]
    assert runs[0] == runs[1] and "object at 0x…" in runs[0]
