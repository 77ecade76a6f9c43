"""A private, throw-away PostgreSQL cluster that fault tests may stop, kill and freeze.

The shared server on 127.0.0.1:5432 must never be broken by a test; this one
is ``initdb``-ed into a temporary directory, listens on a free loopback port
(TCP only, trust authentication) and belongs to the test that made it::

    cluster = PgCluster.create()        # initdb + start
    url = cluster.url(cluster.create_database("app"))
    cluster.freeze()                    # SIGSTOP on every process: a hung server
    cluster.thaw()                      # SIGCONT
    cluster.kill()                      # SIGKILL postmaster and backends: a crash
    cluster.start()                     # crash recovery, same data
    cluster.stop()                      # fast shutdown
    cluster.close()                     # thaw, stop, remove the directory (idempotent)

The ``pg_cluster`` fixture (module scope: initdb costs a few seconds) always
closes its cluster, whatever the test did to it.  As root the server runs as
the ``postgres`` OS user (PostgreSQL refuses to run as root).

Nothing here imports the app: the soak command uses it too.
"""
from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional

# How long start and stop may take before we call the cluster broken.
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

# Settings for a disposable cluster: small, quiet, nothing outside the directory.
# fsync=off is safe against everything these tests do (killed processes, never a
# lost OS page cache) and keeps commits cheap on a shared machine.  Commits stay
# synchronous: with synchronous_commit=off a SIGKILL loses the WAL still in
# shared memory, and a fault test would report data loss the app did not cause.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "on",
    "full_page_writes": "off",
    "shared_buffers": "32MB",
    "max_connections": "100",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "dynamic_shared_memory_type": "posix",
}


class PgClusterError(RuntimeError):
    """The cluster could not be created, started or stopped; the message says why."""


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``postgres`` (``PG_BIN`` overrides the search)."""
    candidates = [os.environ["PG_BIN"]] if os.environ.get("PG_BIN") else []
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version_key, reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(str(Path(found).parent))
    for candidate in candidates:
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "postgres").is_file():
            return Path(candidate)
    raise PgClusterError("no PostgreSQL server binaries (initdb, postgres): set PG_BIN or install postgresql")


def _version_key(path: str) -> float:
    try:
        return float(Path(path).parent.name)
    except ValueError:
        return 0.0


def free_port() -> int:
    """A TCP port nobody listens on right now (the server may still lose a race for it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, parent pid) from /proc, None when the process is gone.  T = stopped, Z = zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read()
    except OSError:
        return None
    # The fields after the parenthesised command name (which may hold spaces): state, ppid, ...
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[1])


def _pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def children(pid: int) -> list[int]:
    """Direct children of ``pid``: a postmaster's backends and helpers, gunicorn's workers."""
    return sorted(child for child in _pids() if (_stat(child) or ("", 0))[1] == pid)


def _in_directory(directory: Path) -> list[int]:
    """Live processes whose working directory is ``directory`` (a cluster's server processes)."""
    target, out = str(directory.resolve()), []
    for pid in _pids():
        try:
            if os.readlink(f"/proc/{pid}/cwd") == target and _alive(pid):
                out.append(pid)
        except OSError:
            continue
    return out


def _state(pid: int) -> Optional[str]:
    stat = _stat(pid)
    return stat[0] if stat else None


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie is gone for our purposes)."""
    return _state(pid) not in (None, "Z")


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


_live: set["PgCluster"] = set()
_live_lock = threading.Lock()


@atexit.register
def _close_leftovers() -> None:
    # Last resort (an interpreter exit that skipped the fixture or the soak's finally).
    with _live_lock:
        clusters = list(_live)
    for cluster in clusters:
        cluster.close()


class PgCluster:
    """One private PostgreSQL cluster in ``root`` (data in ``root/data``, log in ``root/server.log``)."""

    def __init__(self, root: Path, port: int, bin_dir: Path, run_as: Optional[str]) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.log_path = root / "server.log"
        self.port = port
        self.bin_dir = bin_dir
        self.run_as = run_as
        self.host = "127.0.0.1"
        self.user = "postgres"
        self._proc: Optional[subprocess.Popen] = None
        self._frozen: list[int] = []
        self._closed = False

    # ------------------------------------------------------------ lifecycle
    @classmethod
    def create(cls, start: bool = True, parent: Optional[str] = None) -> "PgCluster":
        """``initdb`` a new cluster in a fresh temporary directory (and start it)."""
        run_as = "postgres" if os.geteuid() == 0 else None
        root = Path(tempfile.mkdtemp(prefix="pgcluster-", dir=parent))
        cluster = cls(root, free_port(), find_bin_dir(), run_as)
        with _live_lock:
            _live.add(cluster)
        try:
            if run_as:
                entry = pwd.getpwnam(run_as)
                os.chown(root, entry.pw_uid, entry.pw_gid)
            cluster._initdb()
            for attempt in range(3 if start else 0):
                try:
                    cluster.start()
                    break
                except PgClusterError:
                    # Someone took the free port between our probe and the server's bind.
                    if attempt == 2 or "already in use" not in cluster.log_tail():
                        raise
                    cluster.port = free_port()
        except BaseException:
            cluster.close()
            raise
        return cluster

    def _run_kwargs(self) -> dict:
        kwargs: dict = {"cwd": self.root, "env": {"PATH": "/usr/bin:/bin", "LANG": "C", "LC_ALL": "C"}}
        if self.run_as:
            entry = pwd.getpwnam(self.run_as)
            kwargs.update(user=entry.pw_uid, group=entry.pw_gid, extra_groups=[])
        return kwargs

    def _initdb(self) -> None:
        args = [str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.user, "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, **self._run_kwargs())
        if done.returncode != 0:
            raise PgClusterError(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    @property
    def postmaster_pid(self) -> Optional[int]:
        """The running postmaster's pid, or None."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    def pids(self) -> list[int]:
        """The postmaster and every process it started (backends, checkpointer, ...).

        Backends are found as the postmaster's children and, for orphans whose
        postmaster is gone, by their working directory (every server process
        of a cluster runs in its data directory).
        """
        pid = self.postmaster_pid
        found = [] if pid is None else [pid, *children(pid)]
        found += [other for other in _in_directory(self.data_dir) if other not in found]
        return found

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server (crash recovery included after :meth:`kill`) and wait until it answers."""
        if self._closed:
            raise PgClusterError("the cluster is closed")
        if self.postmaster_pid is not None:
            return
        args = [str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
                # A socket directory of our own: nothing shared with the system server.
                "-c", f"unix_socket_directories={self.root}"]
        for name, value in SERVER_SETTINGS.items():
            args += ["-c", f"{name}={value}"]
        log = open(self.log_path, "ab")
        try:
            self._proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True, **self._run_kwargs())
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                tail = self.log_tail()
                self._proc = None
                raise PgClusterError(f"postgres exited at start on port {self.port}:\n{tail}")
            if self.ping(connect_timeout=1):
                return
            time.sleep(0.1)
        self.stop(mode="immediate")
        raise PgClusterError(f"postgres did not answer on port {self.port} within {timeout:g}s:\n{self.log_tail()}")

    def stop(self, mode: str = "fast", timeout: float = STOP_TIMEOUT) -> None:
        """Shut the server down: ``fast`` (SIGINT: abort transactions, checkpoint) or ``immediate`` (SIGQUIT).

        A frozen cluster is thawed first (a stopped process cannot shut down).
        Falls back to :meth:`kill` when the server does not exit in ``timeout``.
        """
        self.thaw()
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            sig = {"fast": signal.SIGINT, "immediate": signal.SIGQUIT, "smart": signal.SIGTERM}[mode]
            try:
                proc.send_signal(sig)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._proc = None

    def kill(self) -> None:
        """SIGKILL the postmaster and all of its processes at once: a crash, as the OOM killer does it."""
        proc = self._proc
        pids = self.pids()
        _signal_all(pids, signal.SIGKILL)
        self._frozen = []
        if proc is not None:
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL cannot be ignored
                pass
        # Orphaned backends are reaped by init; wait until none is left, so the
        # next start does not find the old shared memory still attached.
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        self._proc = None

    def freeze(self) -> list[int]:
        """SIGSTOP every process of the cluster: connections hang instead of failing.

        The kernel still completes TCP handshakes into the listen backlog, so a
        client sees a connected socket that never answers, the nastiest case.
        Returns the stopped pids.
        """
        pids = self.pids()
        if not pids:
            raise PgClusterError("cannot freeze: the server is not running")
        # The postmaster first, so it cannot start a new backend meanwhile.
        _signal_all(pids, signal.SIGSTOP)
        late = [pid for pid in children(pids[0]) if pid not in pids]
        _signal_all(late, signal.SIGSTOP)
        self._frozen = pids + late
        # Signals are delivered asynchronously: return only once every process is stopped.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if all(_state(pid) in ("T", "t", "Z", None) for pid in self._frozen):
                break
            time.sleep(0.01)
        return list(self._frozen)

    def thaw(self) -> None:
        """SIGCONT every process stopped by :meth:`freeze` (and any child of the postmaster)."""
        pids = set(self._frozen) | set(self.pids())
        _signal_all(sorted(pids), signal.SIGCONT)
        self._frozen = []

    def close(self) -> None:
        """Thaw, stop, kill what is left and delete the directory; safe to call twice."""
        if self._closed:
            return
        try:
            self.thaw()
            self.stop(mode="fast", timeout=STOP_TIMEOUT)
        finally:
            self.kill()
            shutil.rmtree(self.root, ignore_errors=True)
            self._closed = True
            with _live_lock:
                _live.discard(self)

    def __enter__(self) -> "PgCluster":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -------------------------------------------------------------- access
    def url(self, database: str = "postgres", driver: str = "postgresql+psycopg2") -> str:
        """A SQLAlchemy URL for ``database`` on this cluster (what DATABASE_URL gets)."""
        return f"{driver}://{self.user}@{self.host}:{self.port}/{database}"

    def dsn(self, database: str = "postgres", connect_timeout: int = 5) -> str:
        """A libpq connection string for ``database``."""
        return (f"host={self.host} port={self.port} user={self.user} dbname={database} "
                f"connect_timeout={connect_timeout}")

    def connect(self, database: str = "postgres", connect_timeout: int = 5, autocommit: bool = True):
        """A psycopg2 connection (the caller closes it)."""
        import psycopg2

        conn = psycopg2.connect(self.dsn(database, connect_timeout))
        conn.autocommit = autocommit
        return conn

    def ping(self, connect_timeout: int = 1) -> bool:
        """True when ``SELECT 1`` answers within about ``connect_timeout`` seconds."""
        import psycopg2

        try:
            conn = psycopg2.connect(self.dsn("postgres", connect_timeout),
                                    options=f"-c statement_timeout={connect_timeout * 1000}")
        except psycopg2.Error:
            return False
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                return cur.fetchone() == (1,)
        except psycopg2.Error:
            return False
        finally:
            conn.close()

    def query(self, sql: str, params: tuple = (), database: str = "postgres") -> list[tuple]:
        """Run one statement and return its rows (none for statements without a result)."""
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall() if cur.description else []
        finally:
            conn.close()

    def create_database(self, name: Optional[str] = None) -> str:
        """Create a database (a fresh unique name unless given); return its name."""
        name = name or f"app_{uuid.uuid4().hex[:10]}"
        self.query(f'CREATE DATABASE "{name}"')
        return name

    def connections(self, database: str) -> int:
        """Client backends connected to ``database`` (pg_stat_activity), this query's own excluded."""
        rows = self.query("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                          " AND backend_type = 'client backend'", (database,))
        return int(rows[0][0])

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def cluster_fixture() -> Iterator[PgCluster]:
    """The body of a cluster fixture: one started cluster, always closed (skipped, or failed
    under ``CI=true``, when no server binaries are installed)."""
    import pytest

    try:
        cluster = PgCluster.create()
    except PgClusterError as exc:
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(f"private PostgreSQL cluster unavailable: {exc}", pytrace=False)
        pytest.skip(f"private PostgreSQL cluster unavailable: {exc}")
    try:
        yield cluster
    finally:
        cluster.close()


try:
    import pytest as _pytest
except ImportError:  # the soak command does not need pytest
    _pytest = None

if _pytest is not None:
    @_pytest.fixture(scope="module")
    def pg_cluster_module() -> Iterator[PgCluster]:
        """One private cluster per test module (initdb costs a few seconds); deleted at the end."""
        yield from cluster_fixture()

    @_pytest.fixture
    def pg_cluster(pg_cluster_module: PgCluster) -> Iterator[PgCluster]:
        """The module's cluster, thawed and running at the start of every test and thawed after it,
        so a test that fails while it is frozen or stopped does not break the next one.

        Import both names: ``from tests.pgcluster import pg_cluster, pg_cluster_module  # noqa: F401``.
        """
        pg_cluster_module.thaw()
        pg_cluster_module.start()
        yield pg_cluster_module
        pg_cluster_module.thaw()
