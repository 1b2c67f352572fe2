"""The model process of one `rag-assets sync`: the embedding model loaded once per sync, in a process
forked when the sync starts, and asked by every shard run of that sync (in the CLI's process and in its
workers) instead of each loading its own.

Why: loading the model took 5-7 s of every sync that embedded anything, and each sync worker paid it
again (benchmarks/RESULTS.md, "A torch edit taken apart"). The model process is forked when the CLI
starts, before it opens anything, and loads the model on the other core as soon as the sync's plan has
shards to embed, while the CLI creates the first run and runs its `raw_documents` and `chunks` steps; a
sync with nothing to embed never loads it. Its calls take turns by themselves (one request at a time:
on 2 vCPUs two encodes at once ran ~2.5x slower each), and each call gets all the cores.

How: the CLI binds a unix socket in the abstract namespace (no file to clean up) with a random key, forks
the model process, and closes its own copy of the socket before it forks any worker. Each process that
embeds connects once (multiprocessing.connection: pickled messages) and sends ("encode", texts); the
model process answers ("batch", n) after each batch (the progress bar; the `embed.batch` failpoint fires
in the asking process, as before), then ("vectors", array) or ("error", exception).

Only a single-threaded process that has not imported torch forks (`can_fork`); elsewhere, as in a test
process that ran other tests, each run loads its own model (`embedding.load_embedder`). A model process
that dies (killed, out of memory), or sends nothing for ANSWER_TIMEOUT_SECONDS, fails the shards that
wait for it, not the sync; the next sync runs them again. It exits with the CLI: a watchdog thread
notices when its parent is gone.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client, Connection, Listener

import numpy as np

from rag_assets import embedding
from rag_assets.faults import failpoint

DIED = "the sync's model process died (killed, or out of memory); the next sync runs this shard again"
SILENT = "the sync's model process sent nothing for {seconds:g} s; the next sync runs this shard again"
# Longest wait for the model process's next message: its first load (with the ONNX export, ~1 min) or one
# batch. A stopped or stuck process fails the waiting shards instead of hanging the sync.
ANSWER_TIMEOUT_SECONDS = 600.0
WATCH_PARENT_SECONDS = 0.5


class ModelProcessDied(RuntimeError):
    pass


def can_fork() -> bool:
    """Whether this process may fork helpers: not with other threads (one holding a lock at the fork would
    leave it held forever in the child: gRPC and fsspec's event loops run threads), and not once torch is
    imported (its OpenMP pool's native threads are invisible to `threading`, and a forked child's first
    parallel operation hung on them: seen in a test process that had used the model)."""
    return ("fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1
            and "torch" not in sys.modules)


class ServedEmbedder:
    """What the shard runs use of an embedder (`encode`, `device`, `cuda`, `info`), answered by the model
    process over one connection per process (opened at the first call: a forked worker opens its own)."""

    def __init__(self, address: str, authkey: bytes, go: int):
        self.address, self.authkey = address, authkey
        self._go = go  # the pipe the model process waits on before it loads the model
        self._conn: Connection | None = None
        self._pid = 0  # the process that opened _conn
        self._about: dict | None = None

    def load_now(self) -> None:
        """Have the model process load the model now, if it has not yet (the first call does too)."""
        with contextlib.suppress(OSError):  # a closed pipe: the sync is over, or the process is gone
            os.write(self._go, b"1")

    def encode(self, texts: list[str], on_batch: Callable[[int], None] | None = None) -> np.ndarray:
        return self._ask(("encode", list(texts)), on_batch)

    @property
    def device(self) -> str:
        return self.about()["device"]

    @property
    def cuda(self) -> bool:
        return self.about()["cuda"]

    @property
    def info(self) -> embedding.ModelInfo:
        return self.about()["info"]

    def about(self) -> dict:
        if self._about is None:
            self._about = self._ask(("about",))
        return self._about

    def close(self) -> None:
        if self._conn is not None and self._pid == os.getpid():
            self._conn.close()
        self._conn = None

    def _connection(self) -> Connection:
        if self._conn is None or self._pid != os.getpid():  # a connection inherited through a fork is not ours
            self._conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
            self._pid = os.getpid()
        return self._conn

    def _ask(self, request: tuple, on_batch: Callable[[int], None] | None = None):
        if self._conn is None or self._pid != os.getpid():
            self.load_now()
        try:
            conn = self._connection()
            conn.send(request)
            kind, value = self._next(conn)
            while kind == "batch":
                if on_batch:
                    on_batch(value)
                kind, value = self._next(conn)
        except (EOFError, OSError):  # refused, reset or closed: the model process is gone
            self.close()
            raise ModelProcessDied(DIED) from None  # the report names this, not the socket's EOFError
        except BaseException:  # mid-answer (an interrupt): the rest of this answer would confuse the next call
            self.close()
            raise
        if kind == "error":
            raise value
        return value

    def _next(self, conn: Connection) -> tuple:
        if not conn.poll(ANSWER_TIMEOUT_SECONDS):
            self.close()
            raise ModelProcessDied(SILENT.format(seconds=ANSWER_TIMEOUT_SECONDS))
        return conn.recv()


def load_now(options: tuple) -> None:
    """Have the model process serving `options` (if any) load the model now: the sync has shards to embed."""
    served = embedding.served_embedder(options)
    if isinstance(served, ServedEmbedder):
        served.load_now()


@contextlib.contextmanager
def model_process(options: tuple) -> Iterator[bool]:
    """While open, `embedding.load_embedder(*options)` in this process and in processes forked from it
    is the model process's embedder; yields whether there is one (only a single-threaded process forks).
    Inside another one for the same options (the CLI's, around its sync and evaluation), that one serves."""
    if embedding.served_embedder(options) is not None:
        yield True
        return
    if not can_fork():
        yield False
        return
    address, authkey = f"\0rag-assets-model-{os.getpid()}-{secrets.token_hex(8)}", secrets.token_bytes(32)
    listener = Listener(address, family="AF_UNIX", backlog=16, authkey=authkey)
    go_read, go_write = os.pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_serve, args=(listener, options, os.getpid(), go_read), name="rag-assets-model", daemon=True)
    process.start()
    listener.close()  # the model process holds the socket now; workers forked later must not
    os.close(go_read)
    served = ServedEmbedder(address, authkey, go_write)
    embedding.serve_embedder(options, served)
    try:
        yield True
    finally:
        embedding.serve_embedder(options, None)
        served.close()
        os.close(go_write)
        process.terminate()
        process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


# --- in the model process ------------------------------------------------------------------------------

def _serve(listener: Listener, options: tuple, parent: int, go: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="watch-parent").start()
    model = _Model()
    threading.Thread(target=_accept, args=(listener, model), daemon=True, name="accept").start()
    if not os.read(go, 1):  # the sync has shards to embed (or asked); EOF: it ended without
        os._exit(0)
    model.load(options)
    threading.Event().wait()  # until the CLI terminates this process (or the watchdog exits it)


class _Model:
    def __init__(self):
        self.loaded = threading.Event()
        self.turn = threading.Lock()  # one model call at a time: they would only slow each other down
        self.embedder: embedding.TextBatcher | None = None
        self.failure: BaseException | None = None

    def load(self, options: tuple) -> None:
        try:
            self.embedder = embedding.load_embedder_here(*options)
            self.embedder.encode(["warm up"])  # the first call's one-off costs (thread pools, kernels) go here too
        except Exception as exc:
            self.failure = exc
        self.loaded.set()

    def answer(self, conn: Connection, request: tuple) -> None:
        self.loaded.wait()
        if self.failure is not None:
            return _send_error(conn, self.failure)
        kind, *args = request
        with self.turn:
            try:
                if kind == "about":
                    e = self.embedder
                    value = {"device": e.device, "cuda": e.cuda, "info": e.info}
                else:
                    def batch_done(n: int) -> None:
                        failpoint("model_process.batch")
                        conn.send(("batch", n))
                    value = self.embedder.encode(args[0], batch_done)
            except (BrokenPipeError, ConnectionResetError):
                raise  # the asking process is gone: so is this connection
            except Exception as exc:
                return _send_error(conn, exc)
        conn.send(("vectors" if kind == "encode" else kind, value))


def _send_error(conn: Connection, exc: BaseException) -> None:
    try:
        pickle.loads(pickle.dumps(exc))  # some exception types pickle but cannot be rebuilt on the other side
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")  # its type and message, at least
    conn.send(("error", exc))


def _accept(listener: Listener, model: _Model) -> None:
    while True:
        try:
            conn = listener.accept()
        except (EOFError, multiprocessing.AuthenticationError):
            continue  # a caller without the key, or one gone before the handshake
        except OSError:  # e.g. out of file descriptors: wait rather than spin
            time.sleep(0.1)
            continue
        threading.Thread(target=_answer_all, args=(conn, model), daemon=True, name="conn").start()


def _answer_all(conn: Connection, model: _Model) -> None:
    with conn:
        try:
            while True:
                model.answer(conn, conn.recv())
        except (EOFError, OSError):
            return  # the asking process closed its end, or died


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_PARENT_SECONDS)
    os._exit(0)
