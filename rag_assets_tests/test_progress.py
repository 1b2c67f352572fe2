"""What a sync tells while it runs: the shards to run first, then each shard's steps and its chunks embedded."""

from click.testing import CliRunner

from rag_assets.cli import main
from rag_assets.progress import listening
from rag_assets.sync import SyncProgress, run_sync
from rag_assets_tests.conftest import write_corpus

STEPS = ["raw_documents", "chunks", "embeddings", "vector_index"]


class Recorder(SyncProgress):
    def __init__(self):
        self.events = []

    def planned(self, to_run):
        self.events.append(("planned", sorted(p.shard for p in to_run)))

    def finished(self, plan, row):
        self.events.append(("finished", plan.shard, row["status"]))

    def step(self, p):
        self.events.append(("step", p.shard, p.step, p.done, p.total))


def test_sync_reports_the_plan_then_every_step_and_the_embedding_progress(rag_env):
    write_corpus(rag_env.source)
    recorder = Recorder()
    with listening(recorder.step):
        report = run_sync(rag_env.instance(), rag_env.resources(), recorder).as_json()["shards"]
    events = recorder.events
    assert events[0] == ("planned", ["alpha", "beta", "gamma"])  # the total, before any shard runs
    for shard in ("alpha", "beta", "gamma"):
        mine = [e for e in events[1:] if e[1] == shard]
        steps = [e[2] for e in mine if e[0] == "step" and e[4] == 0]  # the steps' own reports
        assert steps == STEPS and mine[-1] == ("finished", shard, "new")
        embedded = [(e[3], e[4]) for e in mine if e[0] == "step" and e[2] == "embeddings" and e[4]]
        assert embedded and embedded[-1] == (report[shard]["embedded"],) * 2  # ends at "all chunks done"
        assert embedded[0] == (0, report[shard]["embedded"]) and [d for d, _ in embedded] == sorted(d for d, _ in embedded)

    (rag_env.source / "beta" / "guide.rst").write_text("Knitting\n========\n\nCables cross stitches into a braid.\n")
    recorder.events.clear()
    run_sync(rag_env.instance(), rag_env.resources(), recorder)
    assert recorder.events[0] == ("planned", ["beta"])  # unchanged shards are not counted as work


def test_the_cli_bar_shows_the_total_and_the_shards_done(rag_env):
    write_corpus(rag_env.source)
    result = CliRunner().invoke(main, ["sync"])
    assert result.exit_code == 0, result.output
    assert "3/3" in result.stderr and "embedding" in result.stderr  # shards done of the total, the chunks bar
    result = CliRunner().invoke(main, ["sync"])
    assert "nothing changed" in result.stderr
