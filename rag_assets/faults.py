"""Failpoints: named places where a crash test kills the process, to prove every write is crash-safe.

`RAG_FAILPOINT=name:N` sends SIGKILL to this process the N-th time `failpoint(name)` is reached (no
cleanup, no flush: what an OOM kill or a lost instance does). Unset, a failpoint is one dict lookup.
"""

import collections
import os
import signal

_hits: collections.Counter = collections.Counter()


def failpoint(name: str) -> None:
    spec = os.environ.get("RAG_FAILPOINT")
    if not spec:
        return
    target, _, nth = spec.partition(":")
    if target == name:
        _hits[name] += 1
        if _hits[name] >= int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
