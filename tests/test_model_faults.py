"""Every failure of the seed's error table, injected for real: damaged, swapped,
missing and escaping files, read-only and full filesystems, exhausted file
descriptors, concurrent threads, SIGKILLed savers and refused commits.
"""
from __future__ import annotations

import errno
import os
import pickle
import resource
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import sklearn
from sqlalchemy import event, select, text, update

from tests import dbutil
from tests.ml_helpers import (
    backend_of,
    booby_pickle,
    listing,
    make_model,
    model_files,
    new_manager,
    pg_commit_refused,
    recorded_events,
    remount,
    run_python,
    scores,
    sql,
    sqlite_path,
    sqlite_reader_lock,
    temp_files,
    tmpfs,
)
from utils.extensions import db
from utils.ml.model_manager import ModelManagerError, get_model_manager
from utils.models import MLModel

T, M = "isolation_forest", "stok_seviye"


@pytest.fixture
def mm(app_ctx):
    return get_model_manager(app_ctx)


@pytest.fixture
def saved(mm):
    """One active file-backed model; returns (row id, its file, the model)."""
    model = make_model(1)
    row = mm.save_model(model, T, M)
    mm.clear_cache()
    found = row.id, mm.models_dir / row.model_path, model
    db.session.rollback()  # end the read transaction: tests below take table locks
    return found


def _set_row(model_id: int, **values) -> None:
    db.session.execute(update(MLModel).where(MLModel.id == model_id).values(**values))
    db.session.commit()


# ------------------------------------------------------------------ damaged files
def test_a_truncated_file_is_refused_and_the_fallback_reason_given(mm, saved):
    model_id, path, _ = saved
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)

    outcome = mm.load_active(T, M)
    assert (outcome.model, outcome.model_id, outcome.reason) == (None, model_id, "checksum_mismatch")
    assert mm.load_model_from_file(T, M) is None
    with pytest.raises(ModelManagerError, match="checksum"):
        mm.activate_model(model_id, actor="test")


def test_a_file_swapped_for_another_valid_pickle_is_never_unpickled(mm, saved, tmp_path):
    model_id, path, _ = saved
    marker = tmp_path / "unpickled"
    evil = booby_pickle(marker)
    # Control: this pickle really does run code when loaded.
    pickle.loads(evil)
    assert marker.exists()
    marker.rmdir()

    path.write_bytes(evil)
    outcome = mm.load_active(T, M)
    assert outcome.reason == "checksum_mismatch" and outcome.model is None
    assert mm._validate_model_file(path) is False
    with pytest.raises(ModelManagerError, match="checksum"):
        mm.activate_model(model_id, actor="test")
    assert not marker.exists()


def test_a_tampered_blob_of_a_migrated_row_is_never_unpickled(mm, saved, tmp_path):
    model_id, path, _ = saved
    marker = tmp_path / "unpickled"
    # A migrated row keeps its BLOB; its checksum covers the BLOB too.
    _set_row(model_id, model_data=booby_pickle(marker))
    outcome = mm.load_model_from_database(T, M)
    assert outcome.reason == "checksum_mismatch" and not marker.exists()


def test_a_missing_file_returns_none_with_the_reason(mm, saved):
    model_id, path, _ = saved
    path.unlink()
    with recorded_events() as log:
        outcome = mm.load_active(T, M)
    assert (outcome.model, outcome.reason) == (None, "file_missing")
    assert log.of("model_load_failed")[0]["reason"] == "file_missing"
    with pytest.raises(ModelManagerError, match="missing"):
        mm.activate_model(model_id, actor="test")


def test_a_fifo_under_a_model_name_is_refused_without_hanging(app, mm, saved):
    _, path, _ = saved
    path.unlink()
    os.mkfifo(path)
    box = {}

    def load():
        with app.app_context():
            box["outcome"] = mm.load_active(T, M)

    worker = threading.Thread(target=load)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "load blocked on a FIFO"
    assert box["outcome"].reason == "read_error" and "not a regular file" in box["outcome"].detail


# ------------------------------------------------------------------ paths outside the directory
def test_a_symlink_escaping_the_directory_is_refused(mm, saved, tmp_path):
    model_id, path, _ = saved
    outside = tmp_path / "outside.pkl"
    outside.write_bytes(path.read_bytes())  # even the right bytes: the location is wrong
    path.unlink()
    path.symlink_to(outside)
    outcome = mm.load_active(T, M)
    assert outcome.reason == "unsafe_path" and "outside" in outcome.detail


@pytest.mark.parametrize("key", ["../outside.pkl", "../ml_models_evil/x.pkl", "ABSOLUTE", "sub/../../outside.pkl"])
def test_a_key_resolving_outside_the_directory_is_refused(mm, saved, tmp_path, key):
    model_id, path, _ = saved
    if key == "ABSOLUTE":
        key = str(tmp_path / "absolute.pkl")
    target = (mm.models_dir / key).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    try:
        _set_row(model_id, model_path=key)
        outcome = mm.load_active(T, M)
        assert outcome.reason == "unsafe_path"
        assert mm.get_model_info(T, M)["path"] is None
        with pytest.raises(ModelManagerError, match="outside"):
            mm.activate_model(model_id, actor="test")
    finally:
        target.unlink()


def test_deleting_a_symlinked_key_removes_the_link_not_its_target(mm, saved):
    _, path, _ = saved
    link = mm.models_dir / "isolation_forest_stok_seviye_20000101_000000_000000aaaa.pkl"
    link.symlink_to(path)
    mm.store.delete(link.name)
    assert not link.exists() and not link.is_symlink() and path.is_file()


# ------------------------------------------------------------------ size limit
def test_a_file_over_ml_max_model_mb_is_refused_before_unpickling(app_ctx, saved, tmp_path):
    model_id, path, _ = saved
    limit_mb = (path.stat().st_size - 1) / (1024 * 1024)
    small = new_manager(app_ctx, max_model_mb=limit_mb)
    outcome = small.load_active(T, M)
    assert outcome.reason == "too_large" and "ML_MAX_MODEL_MB" in outcome.detail
    # The same file under a limit it fits loads fine.
    assert new_manager(app_ctx).load_active(T, M).model_id == model_id


# ------------------------------------------------------------------ transient read errors
def _exhaust_descriptors():
    """Fill the process's file-descriptor table: every open() now fails with EMFILE.

    A real, transient resource error (it clears as soon as descriptors are
    closed), injected without touching the model file or the code under test.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(in_use + 32, 64)), hard))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as exc:
        assert exc.errno == errno.EMFILE
    return held, (soft, hard)


def _release(held, limits):
    while held:
        os.close(held.pop())
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_transient_read_errors_are_retried_with_backoff_then_succeed(app_ctx, saved):
    model_id, _, model = saved
    manager = new_manager(app_ctx, retry_delays=(0.05, 0.1, 0.2))
    manager._active_meta(T, M)  # warm the connection pool: the DB socket is already open
    held, limits = _exhaust_descriptors()
    attempts = []

    def on_event(event_name, fields):
        if event_name == "model_read_retry":
            attempts.append((fields["attempt"], fields["delay_s"], fields["error"]))
            if len(attempts) == 2:  # the fault clears during the second backoff
                while held:
                    os.close(held.pop())

    from utils.ml import events

    events.add_listener(on_event)
    try:
        started = time.perf_counter()
        outcome = manager.load_active(T, M)
        elapsed = time.perf_counter() - started
    finally:
        events.remove_listener(on_event)
        _release(held, limits)
    assert attempts == [(1, 0.05, "EMFILE"), (2, 0.1, "EMFILE")]
    assert (outcome.model_id, outcome.source) == (model_id, "file")
    assert np.array_equal(scores(outcome.model), scores(model))
    assert elapsed >= 0.15  # it really waited 0.05 s then 0.1 s


def test_transient_read_errors_give_up_after_the_last_delay(app_ctx, saved):
    manager = new_manager(app_ctx, retry_delays=(0.02, 0.04, 0.08))
    manager._active_meta(T, M)
    held, limits = _exhaust_descriptors()
    try:
        with recorded_events() as log:
            started = time.perf_counter()
            outcome = manager.load_active(T, M)
            elapsed = time.perf_counter() - started
    finally:
        _release(held, limits)
    assert [f["delay_s"] for f in log.of("model_read_retry")] == [0.02, 0.04, 0.08]
    assert outcome.reason == "read_error" and outcome.model is None
    assert elapsed >= 0.14
    # Permanent errors are not retried.
    Path(manager.models_dir / db.session.execute(select(MLModel.model_path)).scalar_one()).unlink()
    with recorded_events() as log:
        assert manager.load_active(T, M).reason == "file_missing"
    assert log.of("model_read_retry") == []


# ------------------------------------------------------------------ concurrency
def test_ten_threads_loading_at_once_read_the_file_once(app, mm, saved):
    model_id, _, model = saved
    barrier = threading.Barrier(10)

    def load(_):
        with app.app_context():
            barrier.wait()
            return mm.load_active(T, M)

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(load, range(10)))
    assert {o.model_id for o in outcomes} == {model_id}
    assert sorted(o.source for o in outcomes) == ["cache"] * 9 + ["file"]
    expected = scores(model)
    assert all(np.array_equal(scores(o.model), expected) for o in outcomes)


def test_ten_threads_saving_the_same_type_leave_ten_files_and_one_active_row(app, mm, models_dir):
    barrier = threading.Barrier(10)

    def save(seed):
        with app.app_context():
            barrier.wait()
            return mm.save_model_to_file(make_model(seed), T, M)

    with ThreadPoolExecutor(10) as pool:
        paths = list(pool.map(save, range(10)))
    assert len(set(paths)) == 10 and model_files(models_dir) == {Path(p).name for p in paths}
    rows = db.session.execute(select(MLModel.id, MLModel.model_path, MLModel.is_active)).all()
    assert len(rows) == 10 and sum(1 for r in rows if r.is_active) == 1
    assert temp_files(models_dir) == set()
    active_id = next(r.id for r in rows if r.is_active)
    from utils.models import ModelActivation

    audit = db.session.execute(select(ModelActivation).order_by(ModelActivation.id)).scalars().all()
    # The audit trail is one chain: each save deactivated exactly the previous one.
    assert [a.from_model_id for a in audit[1:]] == [a.to_model_id for a in audit[:-1]]
    assert audit[-1].to_model_id == active_id
    mm.clear_cache()
    assert mm.load_active(T, M).model_id == active_id


# ------------------------------------------------------------------ killed savers
_SAVER = """
import sys
from tests import dbutil
from tests.ml_helpers import make_model
from utils.ml.model_manager import get_model_manager
app = dbutil.make_app(sys.argv[1], sys.argv[2], ML_MAX_MODEL_MB=4096)
with app.app_context():
    model = make_model(9) if sys.argv[3] == "small" else {"weights": bytes(int(sys.argv[3]))}
    print("saving", flush=True)
    get_model_manager(app).save_model(model, "isolation_forest", "stok_seviye")
    print("saved", flush=True)
"""


def _start_saver(app, size: str):
    return run_python(_SAVER.replace("sys.argv[1]", repr(app.config["SQLALCHEMY_DATABASE_URI"]))
                      .replace("sys.argv[2]", repr(app.config["ML_MODELS_DIR"]))
                      .replace("sys.argv[3]", repr(size)))


def _wait_for(predicate, timeout=60.0, interval=0.001):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None


def _kill(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def test_a_saver_killed_mid_write_leaves_no_partial_model_and_cleanup_removes_its_temp(app_ctx, mm, saved,
                                                                                        models_dir):
    model_id, _, model = saved
    before = model_files(models_dir)
    proc = _start_saver(app_ctx, str(200 * 1024 * 1024))
    try:
        # Kill it while the temp file is being written (before any final name exists).
        tmp = _wait_for(lambda: [p for p in temp_files(models_dir) if p.endswith(".part")
                                 and (models_dir / p).stat().st_size > 0])
        assert tmp, proc.stderr.read().decode()[-2000:] if proc.poll() is not None else "no temp file appeared"
        proc.send_signal(signal.SIGKILL)
    finally:
        _kill(proc)
    assert proc.returncode == -signal.SIGKILL
    assert model_files(models_dir) == before, "a partial file appeared under a final name"
    assert temp_files(models_dir), "the killed write's temp file should still be there"
    assert db.session.execute(select(MLModel.id)).scalars().all() == [model_id]

    fresh = new_manager(app_ctx)
    outcome = fresh.load_active(T, M)
    assert (outcome.model_id, outcome.source) == (model_id, "file")
    assert np.array_equal(scores(outcome.model), scores(model))
    assert new_manager(app_ctx).cleanup_old_models()["temp_files_deleted"] == 0  # young: within the grace
    result = new_manager(app_ctx, orphan_grace_seconds=0).cleanup_old_models()
    assert result["temp_files_deleted"] >= 1 and temp_files(models_dir) == set()


def test_a_saver_killed_between_file_and_commit_leaves_an_orphan_cleanup_removes(app_ctx, mm, saved, models_dir):
    model_id, _, model = saved
    before = model_files(models_dir)
    url = app_ctx.config["SQLALCHEMY_DATABASE_URI"]
    import sqlalchemy as sa

    # Hold what the saver's commit needs, so it stops after publishing its file.
    if backend_of(app_ctx) == "postgresql":
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)  # close() really disconnects: lock released
        blocker = engine.connect()
        blocker.execute(text("SELECT pg_advisory_lock(7301, hashtext(:k))"), {"k": f"{T}/{M}"})
        blocker.commit()
    else:
        import sqlite3

        blocker = sqlite3.connect(sqlite_path(url), isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
    proc = _start_saver(app_ctx, "small")
    try:
        new = _wait_for(lambda: model_files(models_dir) - before)
        assert new, "the saver never published its file"
        time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        _kill(proc)
        blocker.close()
    assert db.session.execute(select(MLModel.id)).scalars().all() == [model_id]
    outcome = new_manager(app_ctx).load_active(T, M)
    assert (outcome.model_id, outcome.source) == (model_id, "file")
    # The orphan is a complete file with no row: left alone while young, removed after the grace.
    assert new_manager(app_ctx).cleanup_old_models()["orphans_deleted"] == 0
    assert new_manager(app_ctx, orphan_grace_seconds=0).cleanup_old_models()["orphans_deleted"] == 1
    assert model_files(models_dir) == before


# ------------------------------------------------------------------ refused commits
@contextmanager
def refused_commit(app, operation: str):
    """Yield an app context whose next COMMIT after ``operation`` on ml_models really fails.

    PostgreSQL: a deferred constraint trigger raises check_violation at COMMIT.
    SQLite: another connection holds a read lock, so the writer's COMMIT cannot
    get its exclusive lock and fails after a 0.3 s busy timeout.
    """
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    if backend_of(app) == "postgresql":
        target, refusal = app, pg_commit_refused(url, "ml_models", operation)
    else:
        target = dbutil.make_app(url, Path(app.config["ML_MODELS_DIR"]),
                                 SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 0.3}})
        refusal = sqlite_reader_lock(url)
    try:
        with target.app_context(), refusal:
            yield target
    finally:
        if target is not app:
            dbutil.dispose(target)


def test_a_failed_commit_after_the_file_was_written_leaves_no_orphan(app, saved, models_dir):
    model_id, _, model = saved
    before = listing(models_dir)
    with refused_commit(app, "INSERT") as target, recorded_events() as log:
        with pytest.raises(Exception) as caught:
            get_model_manager(target).save_model(make_model(5), T, M)
    assert "injected" in str(caught.value) or "locked" in str(caught.value)
    assert log.of("model_save_failed")
    assert listing(models_dir) == before, "the file of the failed save was left behind"
    db.session.expire_all()
    assert db.session.execute(select(MLModel.id, MLModel.is_active)).all() == [(model_id, True)]
    outcome = new_manager(app).load_active(T, M)
    assert (outcome.model_id, outcome.source) == (model_id, "file")


# pg_terminate_backend is PostgreSQL's; SQLite's commit failure is the test above.
@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_connection_terminated_at_commit_leaves_no_orphan(app, app_ctx, mm, saved, models_dir):
    model_id, _, _ = saved
    before = listing(models_dir)
    url = app.config["SQLALCHEMY_DATABASE_URI"]

    def kill_my_connection(session):
        pid = session.connection().execute(text("SELECT pg_backend_pid()")).scalar_one()
        sql(url, "SELECT pg_terminate_backend(:pid)", {"pid": pid})

    event.listen(db.session, "before_commit", kill_my_connection)
    try:
        with pytest.raises(Exception) as caught:
            mm.save_model(make_model(5), T, M)
    finally:
        event.remove(db.session, "before_commit", kill_my_connection)
    assert "terminat" in str(caught.value).lower() or "closed" in str(caught.value).lower()
    assert listing(models_dir) == before
    db.session.remove()
    assert db.session.execute(select(MLModel.id, MLModel.is_active)).all() == [(model_id, True)]
    mm.clear_cache()
    assert mm.load_active(T, M).model_id == model_id  # the pool recovered


def test_cleanup_deletes_files_only_after_its_commit(app, saved, models_dir):
    with app.app_context():
        manager = get_model_manager(app)
        for seed in range(3):
            manager.save_model(make_model(seed), T, M)
    before = listing(models_dir)
    with refused_commit(app, "DELETE") as target, pytest.raises(Exception):
        get_model_manager(target).cleanup_old_models(keep_versions=1)
    assert listing(models_dir) == before, "files were deleted although the commit failed"
    with app.app_context():
        assert len(db.session.execute(select(MLModel.id)).all()) == 4
        assert get_model_manager(app).cleanup_old_models(keep_versions=1)["deleted_count"] == 3


# ------------------------------------------------------------------ filesystem faults
@pytest.mark.parametrize("fault", ["read_only", "full"])
def test_a_read_only_or_full_directory_fails_the_save_and_keeps_the_previous_model(tmp_path, database_url, fault):
    # A real tmpfs: remounted read-only (root ignores chmod), or 256 KB, too small for a ~590 KB model.
    with tmpfs(tmp_path / "models", size="256k") as directory:
        app = dbutil.make_app(database_url, directory)
        try:
            with app.app_context():
                manager = get_model_manager(app)
                first_id = manager.save_model(make_model(1), T, M).id
                before = listing(directory)
                if fault == "read_only":
                    remount(directory, read_only=True)
                with pytest.raises(OSError) as caught:
                    manager.save_model(make_model(2, n_estimators=200), T, M)
                assert caught.value.errno == (errno.EROFS if fault == "read_only" else errno.ENOSPC)
                assert listing(directory) == before, "a partial file was left behind"
                assert db.session.execute(select(MLModel.id, MLModel.is_active)).all() == [(first_id, True)]
                manager.clear_cache()
                outcome = manager.load_active(T, M)
                assert (outcome.model_id, outcome.source) == (first_id, "file")
                assert manager._check_disk_space()["total_gb"] < 0.001
        finally:
            remount(directory, read_only=False)
            dbutil.dispose(app)


# ------------------------------------------------------------------ versions and caches
def test_a_different_sklearn_version_warns_naming_both_versions(mm, saved, caplog):
    model_id, _, model = saved
    _set_row(model_id, sklearn_version="0.24.2")
    with caplog.at_level("WARNING", logger="ml.events"):
        outcome = mm.load_active(T, M)
    assert outcome.model is not None  # used anyway, as the seed says
    warnings = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "model_version_mismatch"]
    assert warnings and "0.24.2" in warnings[0] and sklearn.__version__ in warnings[0]


def test_activation_in_one_manager_invalidates_the_other_managers_cache(app_ctx):
    reader = new_manager(app_ctx, cache_ttl=3600)
    writer = new_manager(app_ctx, cache_ttl=3600)
    a = writer.save_model(make_model(1), T, M).id
    assert reader.load_active(T, M).source == "file"
    assert reader.load_active(T, M).source == "cache"

    b = writer.save_model(make_model(2), T, M).id
    outcome = reader.load_active(T, M)
    assert (outcome.model_id, outcome.source) == (b, "file")

    writer.activate_model(a, actor="test", reason="rollback")
    outcome = reader.load_active(T, M)
    assert (outcome.model_id, outcome.source) == (a, "file")
    assert reader.load_active(T, M).source == "cache"


def test_the_cache_is_bounded(app_ctx):
    manager = new_manager(app_ctx, cache_size=2, cache_ttl=3600)
    for metric in ("stok_seviye", "tuketim_miktar", "dolum_sure"):
        manager.save_model(make_model(1), T, metric)
    manager.clear_cache()
    for metric in ("stok_seviye", "tuketim_miktar", "dolum_sure"):
        assert manager.load_active(T, metric).source == "file"
    assert len(manager._cache) == 2
    assert manager.load_active(T, "dolum_sure").source == "cache"
    assert manager.load_active(T, "stok_seviye").source == "file"  # the least recently used was evicted
    assert len(manager._cache) == 2


def test_a_commit_that_lands_but_then_raises_keeps_the_file(app_ctx, mm, saved, models_dir):
    """A commit can reach the database and still raise in the client (the shape of a
    lost acknowledgement).  The row then exists, so its file must stay: deleting it
    would leave the new active row pointing at nothing.  Real fault: an after_commit
    hook that raises once the database has committed."""
    def fail_after_commit(session):
        raise RuntimeError("acknowledgement lost after the commit landed")

    event.listen(db.session, "after_commit", fail_after_commit)
    try:
        with pytest.raises(RuntimeError, match="acknowledgement lost"):
            mm.save_model(make_model(5), T, M)
    finally:
        event.remove(db.session, "after_commit", fail_after_commit)
    db.session.remove()
    active = db.session.execute(select(MLModel).where(MLModel.is_active.is_(True))).scalar_one()
    assert active.id != saved[0], "the commit did land: the new version is active"
    assert (models_dir / active.model_path).is_file()
    mm.clear_cache()
    outcome = mm.load_active(T, M)
    assert (outcome.model_id, outcome.source) == (active.id, "file")


def test_cleanup_keeps_a_file_that_a_kept_row_still_uses(app_ctx, mm, saved, models_dir):
    """Legacy rows can share a file name.  Deleting an old row must not delete the
    file a kept (here: the active) row still points at."""
    old_id, _, _ = saved
    middle = mm.save_model(make_model(2), T, M)
    newest = mm.save_model(make_model(3), T, M)
    shared_key, middle_key = newest.model_path, middle.model_path
    db.session.execute(update(MLModel).where(MLModel.id == old_id).values(
        model_path=shared_key, checksum_sha256=newest.checksum_sha256))
    db.session.commit()

    result = mm.cleanup_old_models(keep_versions=1)

    assert result["deleted_count"] == 2 and result["errors"] == []
    assert (models_dir / shared_key).is_file(), "the active version's file was deleted with an old row"
    assert not (models_dir / middle_key).exists()
    mm.clear_cache()
    assert mm.load_active(T, M).model_id == newest.id
