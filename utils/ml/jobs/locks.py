"""Cross-process locks: one per job run, one for the scheduler's leadership.

Two lock flavours share one small interface (:class:`DistributedLock`):

* **PostgreSQL** (:class:`PgAdvisoryLock`): a session-level
  ``pg_try_advisory_lock`` held on a *dedicated* connection that never goes
  back to a pool.  The lock lives exactly as long as that database session:
  when the holding process dies (even ``kill -9``) its socket closes, the
  server ends the session and the lock is free for the next process at once.
  ``verify()`` asks ``pg_locks`` whether this session still holds it, so a
  connection killed by the server (``pg_terminate_backend``, a restart)
  means leadership lost, never a leader that only believes it leads.
* **SQLite** (:class:`~utils.ml.jobs.lease.LeaseLock`, in :mod:`.lease`): a
  row in ``ml_scheduler_leases`` with an expiry, renewed by compare-and-set
  ``UPDATE`` statements (atomic in any database, so no check-then-write
  race).  A dead holder stops renewing and another process takes the row
  over once it has expired.

:class:`LockKeeper` keeps one held while a long task runs;
:class:`~utils.ml.jobs.leader.LeaderElector` competes for one forever.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
import zlib
from abc import ABC, abstractmethod
from typing import Any, Optional

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from utils.db_deadline import connection_classes

logger = logging.getLogger("ml.leader")

# Advisory-lock key spaces (two int4 keys: class, object).  ASCII "MLSC" for
# the scheduler leader, "MLJB" for per-job run locks; the migration lock uses
# the one-bigint form and the activation lock class 7301, so none collide.
LEADER_LOCK_CLASS = 0x4D4C5343
JOB_LOCK_CLASS = 0x4D4C4A42
LEADER_LOCK_NAME = "ml_scheduler"


def process_identity() -> str:
    """``host:pid:random``: who holds a lease (unique even if a pid is reused)."""
    return f"{socket.gethostname()[:150]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def lock_key(name: str) -> int:
    """A stable, positive int4 for ``name`` (the same in every process, unlike ``hash``)."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


def one_line(exc: BaseException) -> str:
    """``Class: first line of the message`` (driver errors carry the SQL on later lines)."""
    text = str(exc).strip().splitlines()
    return f"{exc.__class__.__name__}: {text[0] if text else ''}"[:500]


# --------------------------------------------------------------------- engines
_engines: dict[tuple[int, str], Engine] = {}
_engines_lock = threading.Lock()


def dedicated_engine(url: str, application_name: str = "ml-locks") -> Engine:
    """An engine whose connections are never pooled or shared with requests.

    ``NullPool``: a lock connection is opened for its holder and really closed
    when released, so a session-level lock can never leak into a pooled
    connection that a request would then reuse.  Cached per process (an
    engine must not cross a fork) and per URL.
    """
    key = (os.getpid(), f"{application_name}|{url}")
    with _engines_lock:
        engine = _engines.get(key)
        if engine is None:
            if url.startswith("postgresql"):
                engine = sa.create_engine(
                    url,
                    poolclass=sa.pool.NullPool,
                    isolation_level="AUTOCOMMIT",
                    connect_args={
                        # Marked as ours: the client-side deadline of utils.db_bounds applies
                        # (a frozen server cannot hang a heartbeat), the request wait slots do not.
                        "connection_factory": connection_classes()[1],
                        "connect_timeout": 5,
                        "application_name": application_name,
                        # A hung lock query must not freeze the heartbeat.
                        "options": "-c statement_timeout=5000",
                        # Detect a silently dead network path to the server.
                        "keepalives": 1,
                        "keepalives_idle": 10,
                        "keepalives_interval": 5,
                        "keepalives_count": 3,
                    },
                )
            else:
                # Short busy timeout: a heartbeat that cannot write soon is a
                # failed heartbeat, not a thread blocked for half a minute.
                engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args={"timeout": 5})
            _engines[key] = engine
        return engine


# ----------------------------------------------------------------------- locks
class DistributedLock(ABC):
    """A named lock shared by every process using the same database.

    All methods are thread-safe and never raise database errors: a failure
    is logged and reported as "not held".
    """

    #: True when the holder must call :meth:`verify` periodically to keep it.
    needs_renewal: bool = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = False
        self._mutex = threading.Lock()

    @abstractmethod
    def try_acquire(self) -> bool:
        """Take the lock without waiting; True when this holder has it now."""

    @abstractmethod
    def verify(self) -> bool:
        """True when this holder still has the lock (a lease is renewed)."""

    @abstractmethod
    def release(self) -> None:
        """Give the lock up (idempotent)."""

    def describe(self) -> dict[str, Any]:
        return {"lock": self.name, "kind": self.__class__.__name__, "held": self.held}


class PgAdvisoryLock(DistributedLock):
    """A session-level advisory lock on a dedicated PostgreSQL connection."""

    def __init__(self, engine: Engine, name: str, lock_class: int, keep_connection: bool = False) -> None:
        super().__init__(name)
        self.engine = engine
        self.params = {"cls": lock_class, "key": lock_key(name)}
        # A follower keeps its connection between attempts (the leader
        # election polls); a one-shot job lock closes it when refused.
        self.keep_connection = keep_connection
        self._conn: Optional[Connection] = None

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except SQLAlchemyError:  # already dead: closing it is all we wanted
                pass

    def _connection(self) -> Connection:
        if self._conn is None:
            self._conn = self.engine.connect()
        return self._conn

    def try_acquire(self) -> bool:
        with self._mutex:
            if self.held:
                return self._verify_locked()
            try:
                got = bool(self._connection().execute(
                    sa.text("SELECT pg_try_advisory_lock(:cls, :key)"), self.params
                ).scalar())
            except SQLAlchemyError as exc:
                logger.warning("advisory lock %s: acquire failed: %s", self.name, one_line(exc))
                self._drop_connection()
                return False
            self.held = got
            if not got and not self.keep_connection:
                self._drop_connection()
            return got

    def _verify_locked(self) -> bool:
        if self._conn is None:
            self.held = False
            return False
        try:
            still = bool(self._conn.execute(
                sa.text(
                    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'"
                    " AND pid = pg_backend_pid() AND classid = :cls AND objid = :key"
                    " AND objsubid = 2 AND granted)"
                ),
                self.params,
            ).scalar())
        except SQLAlchemyError as exc:
            # The session is gone, and with it the lock (the server released it).
            logger.warning("advisory lock %s: connection lost: %s", self.name, one_line(exc))
            still = False
        if not still:
            self.held = False
            self._drop_connection()
        return still

    def verify(self) -> bool:
        with self._mutex:
            return self._verify_locked()

    def release(self) -> None:
        with self._mutex:
            if self.held and self._conn is not None:
                try:
                    self._conn.execute(sa.text("SELECT pg_advisory_unlock(:cls, :key)"), self.params)
                except SQLAlchemyError as exc:  # closing the session releases it anyway
                    logger.warning("advisory lock %s: unlock failed: %s", self.name, one_line(exc))
            self.held = False
            self._drop_connection()

    def backend_pid(self) -> Optional[int]:
        """The server process id of the holding session (operators and tests use it)."""
        with self._mutex:
            if self._conn is None:
                return None
            return int(self._conn.execute(sa.text("SELECT pg_backend_pid()")).scalar())


def make_lock(url: str, name: str, lock_class: int, lease_seconds: float,
              application_name: str = "ml-locks", keep_connection: bool = False) -> DistributedLock:
    """The right lock for the database at ``url``: advisory on PostgreSQL, a lease elsewhere."""
    # Imported here: lease.py builds on this module (DistributedLock, one_line).
    from utils.ml.jobs.lease import LeaseLock

    engine = dedicated_engine(url, application_name)
    if engine.dialect.name == "postgresql":
        return PgAdvisoryLock(engine, name, lock_class, keep_connection=keep_connection)
    return LeaseLock(engine, name, lease_seconds)


class LockKeeper:
    """Keeps a lock while a long task holds it: renews a lease, checks an advisory lock.

    An advisory lock lives as long as its session; if that session dies (a
    restarted connection, ``pg_terminate_backend``) the lock is gone while the
    task runs on, so each beat also checks it and re-takes it when nobody else
    has meanwhile, closing the window in which a second run could start.
    """

    def __init__(self, lock: DistributedLock, every_seconds: float) -> None:
        self.lock = lock
        self.every = every_seconds
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "LockKeeper":
        self._thread = threading.Thread(target=self._run, name=f"lock-keeper-{self.lock.name}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        # A failed renewal (the database busy or away for a moment) is retried at
        # the next beat, never given up: the lease stays ours until it expires and
        # a renewal re-takes it, whereas stopping would let it lapse while the task
        # still runs, so another process could start the same job.
        lost = False
        while not self._stop.wait(self.every):
            held = self.lock.verify() or self.lock.try_acquire()
            if not held and not lost:
                logger.warning("lock %s was lost while its task was still running; retrying", self.lock.name)
            elif held and lost:
                logger.warning("lock %s is held again", self.lock.name)
            lost = not held

    def __exit__(self, *exc_info: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
