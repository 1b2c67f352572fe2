"""Live progress of the shard runs this process executes, for the CLI's progress bars.

A run executed in this process (`rag-assets sync` and `demo`: in-process, one step after another) reports
each step it starts and, while embedding, the chunks done of the chunks to embed; whoever listens draws
it. A run in another process (the daemon's) has no listener, and its progress is in its run logs.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Progress:
    shard: str
    step: str  # the asset being materialized: raw_documents | chunks | embeddings | vector_index
    done: int = 0  # embeddings: chunks embedded so far
    total: int = 0  # embeddings: chunks to embed in this run (0: none, or another step)


_listeners: list[Callable[[Progress], None]] = []
log = logging.getLogger(__name__)


def report(shard: str, step: str, done: int = 0, total: int = 0) -> None:
    for listener in list(_listeners):
        try:
            listener(Progress(shard, step, done, total))
        except Exception:  # a progress bar that cannot draw (a closed stderr) must not fail the shard's step
            log.debug("progress listener failed", exc_info=True)


def silence() -> None:
    """No listener in this process (a sync worker: its parent draws the bars)."""
    _listeners.clear()


@contextlib.contextmanager
def listening(listener: Callable[[Progress], None]) -> Iterator[None]:
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
