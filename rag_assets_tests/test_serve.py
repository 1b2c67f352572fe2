"""`rag-assets serve` over real HTTP: a server process on loopback, on a synced collection, asked with requests."""

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from rag_assets.sync import run_sync
from rag_assets_tests.conftest import make_env, write_corpus
from rag_assets_tests.emulators import free_port

CLI = str(Path(sys.executable).with_name("rag-assets"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        env = make_env(tmp_path_factory.mktemp("serve"), mp)
        write_corpus(env.source)
        assert run_sync(env.instance(), env.resources()).as_json()["totals"]["failed"] == 0
        port = free_port()
        log = env.home / "serve.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([CLI, "serve", "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log.read_text()[-3000:]
                try:
                    if requests.get(f"{url}/health", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                assert time.monotonic() < deadline, "serve did not answer /health:\n" + log.read_text()[-3000:]
                time.sleep(0.3)
            yield env, url
        finally:
            proc.terminate()
            proc.wait(30)


def test_search_answers_with_the_same_json_as_the_cli(server):
    env, url = server
    for params in ({"q": "lava from a volcano", "k": "3"}, {"q": "knitting stitches", "k": "2", "shard": "beta"}):
        response = requests.get(f"{url}/search", params=params, timeout=30)
        assert response.status_code == 200, response.text
        args = [CLI, "search", params["q"], "-k", params["k"], "--json"] + (["--shard", params["shard"]] if "shard" in params else [])
        cli = json.loads(subprocess.run(args, capture_output=True, text=True, check=True).stdout)
        served = response.json()
        assert served["query"] == cli["query"] and len(served["hits"]) == int(params["k"])
        assert [h["chunk_id"] for h in served["hits"]] == [h["chunk_id"] for h in cli["hits"]]
        for ours, theirs in zip(served["hits"], cli["hits"]):
            assert ours.keys() == theirs.keys() and ours["score"] == pytest.approx(theirs["score"], abs=1e-5)
            assert {k: v for k, v in ours.items() if k != "score"} == {k: v for k, v in theirs.items() if k != "score"}
    assert requests.get(f"{url}/search", params={"q": "lava from a volcano", "k": 1}).json()["hits"][0]["doc_id"] == "alpha/volcano.md"
    assert {h["shard"] for h in requests.get(f"{url}/search", params={"q": "stitches", "k": 3, "shard": "beta"}).json()["hits"]} == {"beta"}


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid"])
def test_each_search_mode_answers_as_the_cli_does(server, mode):
    _, url = server
    served = requests.get(f"{url}/search", params={"q": "stitches volcano", "k": 4, "mode": mode}, timeout=30).json()
    cli = json.loads(subprocess.run([CLI, "search", "stitches volcano", "-k", "4", "--mode", mode, "--json"],
                                    capture_output=True, text=True, check=True).stdout)
    assert served["mode"] == cli["mode"] == mode
    assert [h["chunk_id"] for h in served["hits"]] == [h["chunk_id"] for h in cli["hits"]] and served["hits"]
    if mode == "sparse":  # BM25 finds only chunks holding a query word (stemmed): nothing else scores
        assert all(any(w in h["text"].lower() for w in ("stitch", "volcano")) for h in served["hits"])


def test_health_reports_the_collection(server):
    env, url = server
    health = requests.get(f"{url}/health", timeout=10).json()
    status = json.loads(subprocess.run([CLI, "status", "--json"], capture_output=True, text=True, check=True).stdout)["shards"]
    assert health["status"] == "ok" and health["collection"] == "rag_chunks" and health["physical_collection"].startswith("rag_chunks__")
    assert health["points"] == sum(row["points"] for row in status.values()) > 0
    assert health["model"].startswith("sentence-transformers/all-MiniLM-L6-v2@")


@pytest.mark.parametrize("params, status, message", [
    ({}, 400, "the query is empty"),
    ({"q": "   "}, 400, "the query is empty"),
    ({"q": "lava", "k": "0"}, 400, "k must be an integer between 1 and 1000, got 0"),
    ({"q": "lava", "k": "1001"}, 400, "between 1 and 1000"),
    ({"q": "lava", "k": "ten"}, 400, "got 'ten'"),
    ({"q": "lava", "shard": "nope"}, 404, "no shard 'nope' in the collection"),
    ({"q": "lava", "mode": "fuzzy"}, 400, "mode must be one of hybrid, dense, sparse, got 'fuzzy'"),
])
def test_bad_requests_get_honest_errors(server, params, status, message):
    _, url = server
    response = requests.get(f"{url}/search", params=params, timeout=10)
    assert response.status_code == status and message in response.json()["error"]


def test_warm_queries_are_fast(server):
    """The model is loaded once: a warm query costs an encode and a search. The figure recorded in
    benchmarks/RESULTS.md comes from benchmarks/search_latency.py; here a bound that a loaded CI
    machine still meets, against the ~6 s of a cold `rag-assets search`."""
    _, url = server
    with requests.Session() as http:
        http.get(f"{url}/search", params={"q": "warm up"})
        seconds = []
        for i in range(20):
            started = time.perf_counter()
            assert http.get(f"{url}/search", params={"q": f"glaciers carving valleys {i}", "k": 5}).status_code == 200
            seconds.append(time.perf_counter() - started)
    assert statistics.median(seconds) < 0.5, seconds
