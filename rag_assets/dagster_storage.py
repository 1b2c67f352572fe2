"""Dagster's SQLite storage with its connections kept open: the laptop default of `dagster.yaml`.

Dagster's SQLite run and event-log storages build a new SQLAlchemy engine and open a new SQLite connection
for every statement they run (`poolclass=NullPool`). A 4-shard sync writes about 140 events, each one a
fresh engine plus one or two connections, which cost ~1 s of the sync (benchmarks/RESULTS.md). These
subclasses keep one engine per database file instead (a small LRU: the index shard, `runs.db` and the
runs in flight), and are otherwise Dagster's own classes on the same files: a home switches between them
and the stock `storage: sqlite:` with nothing to migrate.

Safe to share because Dagster already serializes every event-log connection behind a lock, SQLite's own
file locks still order writers across processes (each statement commits as before), and a forked child
(a sync worker) never touches a parent's connection: the pools are reset in the child (SQLAlchemy's
`dispose(close=False)`). Production uses Postgres (infra/), which pools on its own.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as db
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage
from dagster._core.storage.sql import create_engine
from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS
from dagster._core.storage.sqlite_storage import (
    DagsterSqliteStorage,
    _event_logs_directory,
    _runs_directory,
    _schedule_directory,
)
from dagster._core.storage.schedules.sqlite.sqlite_schedule_storage import SqliteScheduleStorage
from sqlalchemy.pool import QueuePool

# Open engines per storage: the event log's index shard and the runs being written (a sync's workers each
# write their own run); an engine past this is disposed, least recently used first.
MAX_OPEN_DATABASES = 8


class _Engines:
    """One pooled engine per SQLite file, LRU-bounded, reset in a forked child."""

    def __init__(self, limit: int = MAX_OPEN_DATABASES):
        self._limit = limit
        self._engines: OrderedDict[str, db.engine.Engine] = OrderedDict()
        self._lock = threading.Lock()
        _ALL_ENGINES.add(self)  # reset in a forked child by the one fork hook below

    def get(self, conn_string: str) -> db.engine.Engine:
        with self._lock:
            engine = self._engines.pop(conn_string, None)
            if engine is None:
                # One kept connection: Dagster holds one only inside a `with` (behind a lock, for the event
                # log); a second thread at the same moment gets its own, closed after use, and never waits.
                engine = create_engine(conn_string, poolclass=QueuePool, pool_size=1, max_overflow=-1,
                                       connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False})
            self._engines[conn_string] = engine
            evicted = [self._engines.popitem(last=False)[1] for _ in range(len(self._engines) - self._limit)]
        for old in evicted:
            old.dispose()
        return engine

    def forget_in_child(self) -> None:
        """After fork: drop the parent's connections without closing them (they are the parent's)."""
        for engine in self._engines.values():
            engine.dispose(close=False)
        self._engines.clear()
        self._lock = threading.Lock()

    def dispose(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), OrderedDict()
        for engine in engines:
            engine.dispose()


# Every live _Engines, weakly: one fork hook for the process, not one per storage ever made (a hook cannot
# be unregistered), and a storage that is gone is not kept alive by it.
_ALL_ENGINES: weakref.WeakSet[_Engines] = weakref.WeakSet()
os.register_at_fork(after_in_child=lambda: [engines.forget_in_child() for engines in list(_ALL_ENGINES)])


class PooledSqliteEventLogStorage(SqliteEventLogStorage):
    """`SqliteEventLogStorage` (one SQLite file per run plus an index shard) on pooled connections."""

    def __init__(self, base_dir: str, inst_data=None):
        self._pooled = _Engines()
        super().__init__(base_dir, inst_data)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[db.engine.Connection]:
        # Dagster's `_connect`, with a kept engine instead of a new one per statement.
        with self._db_lock:
            engine = self._pooled.get(self.conn_string_for_shard(shard))
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            with engine.connect() as conn, conn.begin():
                yield conn

    def wipe(self) -> None:
        self._pooled.dispose()  # before Dagster deletes the files under open connections
        super().wipe()

    def dispose(self) -> None:
        self._pooled.dispose()
        super().dispose()


class PooledSqliteRunStorage(SqliteRunStorage):
    """`SqliteRunStorage` (`runs.db`) on a pooled connection."""

    def __init__(self, conn_string: str, inst_data=None):
        self._pooled = _Engines(limit=1)
        super().__init__(conn_string, inst_data)

    @contextmanager
    def connect(self) -> Iterator[db.engine.Connection]:
        with self._pooled.get(self._conn_string).connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self._pooled.dispose()
        super().dispose()


class PooledSqliteStorage(DagsterSqliteStorage):
    """`storage: custom:` class for dagster.yaml: the files of `storage: sqlite:` under `base_dir`."""

    def __init__(self, base_dir: str, inst_data=None):
        # DagsterSqliteStorage.__init__ with the pooled classes (it would open the stock ones first).
        self.base_dir = base_dir
        self._run_storage = PooledSqliteRunStorage.from_local(_runs_directory(base_dir))
        self._event_log_storage = PooledSqliteEventLogStorage(_event_logs_directory(base_dir))
        self._schedule_storage = SqliteScheduleStorage.from_local(_schedule_directory(base_dir))
        self._inst_data = inst_data
        super(DagsterSqliteStorage, self).__init__()

    @classmethod
    def from_config_value(cls, inst_data, config_value):
        return cls.from_local(inst_data=inst_data, **config_value)
