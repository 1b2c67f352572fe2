"""model_process: the sync's one model process answers the shard runs' model calls, in this process and in
processes forked from it, with the vectors the model gives when loaded here; a model process that dies
fails the calls waiting for it (and the sync's shards that needed it), never hangs them, and the next
sync catches up.

A model process is forked only from a single-threaded process, and a test process has threads left by
earlier tests: the cases that need one run in a fresh interpreter (`in_fresh_process`)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from rag_assets import embedding
from rag_assets.config import default_model
from rag_assets.embedding import embedder_options, load_embedder, load_embedder_here
from rag_assets.model_process import DIED, SILENT, ModelProcessDied, ServedEmbedder, model_process

TEXTS = [f"Sentence {i} about {topic}." for i, topic in enumerate(["tides", "orbits", "kites", "bread"] * 5)]


def options(model: str = "") -> tuple:
    return embedder_options(model or default_model(), "torch", "cpu", 4)  # batches of 4: several progress messages


def served_vectors(model: str = "") -> dict:
    """Run in a fresh interpreter: vectors and progress from the model process, asked by this process and by
    a process forked from it, at the same time."""
    opts = options(model)
    with model_process(opts) as started:
        embedder = load_embedder(*opts)
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # a forked shard worker: its own connection
            try:
                vectors = embedder.encode(TEXTS[::-1])
                os.write(write, json.dumps(vectors.tolist()).encode())
            finally:
                os._exit(0)
        os.close(write)
        batches: list[int] = []
        try:
            vectors = embedder.encode(TEXTS, batches.append)
            error = ""
        except Exception as exc:
            vectors, error = np.zeros((0, 0)), f"{type(exc).__name__}: {exc}"
        with os.fdopen(read, "rb") as pipe:
            from_child = pipe.read()
        os.waitpid(child, 0)
        about = {"device": embedder.device, "cuda": embedder.cuda} if not error else {}
        return {"started": started, "served": isinstance(embedder, ServedEmbedder), "vectors": vectors.tolist(),
                "child": json.loads(from_child) if from_child else None, "batches": batches, "about": about, "error": error}


def killed_mid_call() -> dict:
    """Run in a fresh interpreter: the model process is killed while a call waits; the call fails, in time."""
    opts = options()
    with model_process(opts):
        embedder = load_embedder(*opts)
        embedder.encode(TEXTS[:1])  # loaded: the next call finds the process busy or idle, never loading
        pid = next(p.pid for p in __import__("multiprocessing").active_children() if p.name == "rag-assets-model")
        threading.Timer(0.05, os.kill, (pid, signal.SIGKILL)).start()
        started = time.monotonic()
        try:
            while time.monotonic() - started < 60:
                embedder.encode(TEXTS * 20)
            return {"error": ""}
        except ModelProcessDied as exc:
            return {"error": str(exc), "seconds": time.monotonic() - started}


def stopped_mid_call() -> dict:
    """Run in a fresh interpreter: the model process is stopped (SIGSTOP) while a call waits; the call fails
    once the process has been silent for ANSWER_TIMEOUT_SECONDS."""
    from rag_assets import model_process as mp

    opts = options()
    with model_process(opts):
        embedder = load_embedder(*opts)
        embedder.encode(TEXTS[:1])  # loaded (which may take longer than the limit below)
        mp.ANSWER_TIMEOUT_SECONDS = 3.0
        pid = next(p.pid for p in __import__("multiprocessing").active_children() if p.name == "rag-assets-model")
        os.kill(pid, signal.SIGSTOP)
        started = time.monotonic()
        try:
            embedder.encode(TEXTS)
            return {"error": ""}
        except ModelProcessDied as exc:
            return {"error": str(exc), "seconds": time.monotonic() - started}
        finally:
            os.kill(pid, signal.SIGCONT)


def with_torch_imported() -> dict:
    import torch  # noqa: F401

    with model_process(options()) as started:
        return {"started": started, "served": isinstance(load_embedder(*options()), ServedEmbedder)}


def in_fresh_process(function: str, *args: str) -> dict:
    code = f"import json; from {__name__} import {function}; print(json.dumps({function}(*{args!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_model_process_gives_the_vectors_of_a_model_loaded_here_to_every_process():
    got = in_fresh_process("served_vectors")
    assert got["started"] and got["served"] and not got["error"], got["error"]
    here = load_embedder_here(*options()).encode(TEXTS)
    np.testing.assert_allclose(np.array(got["vectors"]), here, atol=1e-6)
    np.testing.assert_allclose(np.array(got["child"]), here[::-1], atol=1e-6)
    assert sum(got["batches"]) == len(TEXTS) and len(got["batches"]) == len(TEXTS) // 4  # the progress of each batch
    assert got["about"] == {"device": "cpu", "cuda": False}


def test_a_model_that_cannot_load_fails_each_call_with_its_own_error(tmp_path):
    missing = str(tmp_path / "no-such-model")
    got = in_fresh_process("served_vectors", missing)
    with pytest.raises(Exception) as here:
        load_embedder_here(*options(missing))
    assert got["served"] and got["error"] == f"{type(here.value).__name__}: {here.value}"


def test_a_killed_model_process_fails_the_waiting_call_and_nothing_hangs():
    got = in_fresh_process("killed_mid_call")
    assert got["error"] == DIED and got["seconds"] < 30


def test_a_stopped_model_process_fails_the_waiting_call_once_it_is_silent_too_long():
    got = in_fresh_process("stopped_mid_call")
    assert got["error"] == SILENT.format(seconds=3.0) and 3.0 <= got["seconds"] < 20, got


def test_a_process_that_imported_torch_does_not_fork_one():
    """Its OpenMP threads would leave a forked child's first parallel operation hanging."""
    assert in_fresh_process("with_torch_imported") == {"started": False, "served": False}


def test_a_process_with_other_threads_loads_its_own_model():
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with model_process(options()) as started:
            embedder = load_embedder(*options())
    finally:
        stop.set()
        other.join()
    assert not started and not isinstance(embedder, ServedEmbedder)
    assert embedding.served_embedder(options()) is None


def test_the_model_process_exits_when_its_sync_is_killed():
    code = ("import os, time; from rag_assets.model_process import model_process; import rag_assets_tests.test_model_process as t; "
            "import multiprocessing as mp\n"
            "with model_process(t.options()):\n"
            "    print([p.pid for p in mp.active_children()][0], flush=True); time.sleep(600)")
    sync = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    model = int(sync.stdout.readline())
    sync.kill()  # SIGKILL: no cleanup runs in the sync
    sync.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and _alive(model):
        time.sleep(0.1)
    assert not _alive(model)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # reaped by init soon after it exits: a zombie is gone too
        return stat.read().split(")")[-1].split()[0] != "Z"
