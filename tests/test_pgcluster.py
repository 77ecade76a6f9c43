"""The private PostgreSQL cluster of tests/pgcluster.py: real freezes, kills and restarts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from tests.pgcluster import PgCluster, _alive, _state
from tests.pgcluster import pg_cluster, pg_cluster_module  # noqa: F401  (the fixtures under test)

ROOT = Path(__file__).resolve().parents[1]


def _connect_seconds(cluster: PgCluster, database: str) -> tuple[float, str]:
    """Seconds a connect with connect_timeout=1 took, and how it ended."""
    started = time.monotonic()
    try:
        conn = psycopg2.connect(cluster.dsn(database, connect_timeout=1))
        conn.close()
        outcome = "connected"
    except psycopg2.OperationalError as exc:
        outcome = str(exc).strip().splitlines()[-1]
    return time.monotonic() - started, outcome


def test_frozen_server_times_out_and_answers_after_thaw(pg_cluster):
    database = pg_cluster.create_database()
    frozen = pg_cluster.freeze()
    try:
        assert pg_cluster.postmaster_pid in frozen
        # (A backend that was already exiting when we froze may be gone.)
        states = {pid: _state(pid) for pid in frozen if _alive(pid)}
        assert pg_cluster.postmaster_pid in states and set(states.values()) == {"T"}, states
        seconds, outcome = _connect_seconds(pg_cluster, database)
        # The handshake completes in the kernel; libpq gives up at connect_timeout.
        assert outcome.endswith("timeout expired"), outcome
        assert seconds < 3.0, f"a connect to a frozen server took {seconds:.2f}s"
    finally:
        pg_cluster.thaw()
    seconds, outcome = _connect_seconds(pg_cluster, database)
    assert outcome == "connected"
    assert pg_cluster.query("SELECT 1", database=database) == [(1,)]


def test_open_connection_hangs_while_frozen_whatever_the_server_timeouts(pg_cluster):
    # statement_timeout and TCP keepalives are set, and still nothing ends the
    # wait: the server cannot run its timer and the kernel answers keepalives.
    conn = psycopg2.connect(pg_cluster.dsn(connect_timeout=1), keepalives=1, keepalives_idle=1,
                            keepalives_interval=1, keepalives_count=1,
                            options="-c statement_timeout=500 -c lock_timeout=500")
    conn.autocommit = True
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                outcome["rows"] = cur.fetchall()
        except psycopg2.Error as exc:  # pragma: no cover - would mean the freeze was not real
            outcome["error"] = exc

    pg_cluster.freeze()
    worker = threading.Thread(target=run, daemon=True)
    try:
        worker.start()
        worker.join(timeout=3.0)
        assert worker.is_alive(), f"a query on a frozen server returned: {outcome}"
    finally:
        pg_cluster.thaw()
    worker.join(timeout=10)
    assert outcome == {"rows": [(1,)]}
    conn.close()


def test_kill_then_start_keeps_committed_data(pg_cluster):
    database = pg_cluster.create_database()
    pg_cluster.query("CREATE TABLE t (v int); INSERT INTO t VALUES (42)", database=database)
    old = pg_cluster.pids()
    assert len(old) > 1  # postmaster plus its helpers
    pg_cluster.kill()
    assert pg_cluster.pids() == []
    assert not any(_alive(pid) for pid in old)
    assert not pg_cluster.ping()
    pg_cluster.start()  # crash recovery
    assert pg_cluster.query("SELECT v FROM t", database=database) == [(42,)]


def test_stop_then_start(pg_cluster):
    database = pg_cluster.create_database()
    conn = pg_cluster.connect(database)
    pg_cluster.stop()
    with pytest.raises(psycopg2.OperationalError):
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    conn.close()
    assert pg_cluster.pids() == []
    pg_cluster.start()
    assert pg_cluster.connections(database) == 0
    assert pg_cluster.ping()


def test_a_test_may_leave_the_cluster_stopped(pg_cluster):
    pg_cluster.stop()
    assert pg_cluster.pids() == []


def test_the_next_test_gets_it_running_again(pg_cluster):
    assert pg_cluster.ping()


def test_close_of_a_frozen_cluster_leaves_nothing():
    cluster = PgCluster.create()
    pids, root = cluster.freeze(), cluster.root
    cluster.close()
    assert not root.exists()
    assert [pid for pid in pids if _alive(pid)] == []
    cluster.close()  # idempotent


def test_fixture_cleans_up_after_a_failing_test(tmp_path):
    # A real pytest run whose only test fails while its cluster is frozen.
    record = tmp_path / "cluster.json"
    test_file = tmp_path / "test_inner.py"
    test_file.write_text(textwrap.dedent(f"""
        import json
        from tests.pgcluster import pg_cluster, pg_cluster_module  # noqa: F401

        def test_fails_while_frozen(pg_cluster):
            pids = pg_cluster.freeze()
            with open({str(record)!r}, "w") as handle:
                json.dump({{"root": str(pg_cluster.root), "pids": pids}}, handle)
            assert False, "deliberate failure"
    """))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
         "-c", os.devnull, str(test_file)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert "deliberate failure" in done.stdout
    seen = json.loads(record.read_text())
    assert not Path(seen["root"]).exists()
    assert [pid for pid in seen["pids"] if _alive(pid)] == []
