"""``flask ml migrate-store --to URL [--dry-run]`` between a local directory and a real S3 server, both ways.

Every check reads the real result: the objects on the server (through its
own client), the files on disk, the rows in the database.  The resume test
SIGKILLs the S3 server while the command (a real process, frozen for that moment) is copying.
"""
from __future__ import annotations

import hashlib
import os
import re
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import insert, select

from tests import dbutil
from tests.ml_helpers import make_model, scores
from tests.procutil import ROOT, base_env, start, stop_group, tail
from tests.s3_helpers import aws, bucket, no_ambient_aws, server  # noqa: F401  (fixtures)
from tests.s3_helpers import cache_files, model_objects, s3_app, top_level_models
from tests.s3server import running_server
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.models import MLModel


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def rows(app) -> dict[str, str]:
    """key -> checksum of every file-backed row."""
    with app.app_context():
        found = db.session.execute(select(MLModel.model_path, MLModel.checksum_sha256)
                                   .where(MLModel.model_path.is_not(None))).all()
        db.session.rollback()
    return dict(found)


def save_models(app, count: int, payload=None) -> dict[str, str]:
    with app.app_context():
        manager = get_model_manager()
        for i in range(count):
            model = payload(i) if payload else make_model(i)
            manager.save_model(model, "isolation_forest", f"metric_{i % 2}", activate=(i >= count - 2))
    return rows(app)


def add_legacy_file_row(app) -> None:
    """A row as the original application left it: an absolute path, no checksum (never loaded by us)."""
    with app.app_context():
        db.session.execute(insert(MLModel).values(
            model_type="isolation_forest", metric_type="legacy_file", model_data=b"FILE_BASED",
            model_path="/app/ml_models/isolation_forest_legacy_file_20251113_120000.pkl", is_active=False))
        db.session.commit()


def migrate(app, *args: str):
    return app.test_cli_runner().invoke(args=["ml", "migrate-store", *args])


def test_local_to_s3_dry_run_copy_rerun_then_switch(database_url, models_dir, aws, server, bucket, tmp_path):
    app = dbutil.make_app(database_url, models_dir)
    target = f"s3://{bucket}/models"
    try:
        expected = save_models(app, 3)
        add_legacy_file_row(app)
        (models_dir / "isolation_forest_orphan_20250101_000000_0000000000.pkl").write_bytes(b"no row")
        before = sorted(p.name for p in models_dir.rglob("*"))

        dry = migrate(app, "--to", target, "--dry-run")
        assert dry.exit_code == 0, dry.output
        assert dry.output.count("would be copied") == 3 and "Would copy 3 object(s)" in dry.output
        assert "legacy_file_20251113_120000.pkl not copied: no checksum recorded" in dry.output
        assert "Dry run: nothing was written anywhere." in dry.output
        assert server.client().list_objects_v2(Bucket=bucket).get("KeyCount") == 0
        assert sorted(p.name for p in models_dir.rglob("*")) == before  # no cache directory either

        real = migrate(app, "--to", target)
        assert real.exit_code == 0, real.output
        assert real.output.count("copied (") == 3 and "1 without a checksum (not copied), 0 failed" in real.output
        assert f"Next: set ML_STORE_URL={target}" in real.output
        stored = model_objects(server, bucket)
        assert {key.removeprefix("models/"): sha(data) for key, data in stored.items()} == expected
        assert not any("orphan" in key for key in stored)  # only objects a row references

        again = migrate(app, "--to", target)
        assert again.exit_code == 0, again.output
        assert again.output.count("already in the target") == 3 and "Copied 0 object(s)" in again.output
        assert model_objects(server, bucket) == stored
    finally:
        dbutil.dispose(app)

    # The operator switches ML_STORE_URL: a host with an empty cache loads every active model from S3.
    switched = s3_app(database_url, tmp_path / "new-host", target)
    try:
        with switched.app_context():
            manager = get_model_manager()
            for metric, seed in (("metric_0", 2), ("metric_1", 1)):
                outcome = manager.load_active("isolation_forest", metric)
                assert outcome.ok and outcome.source == "file", outcome
                assert np.allclose(scores(outcome.model), scores(make_model(seed)))
    finally:
        dbutil.dispose(switched)


def test_s3_to_local_copies_verifies_and_reports_each_failure(database_url, models_dir, aws, server, bucket,
                                                              tmp_path):
    app = s3_app(database_url, models_dir, f"s3://{bucket}/models")
    local = tmp_path / "back-home"
    try:
        expected = save_models(app, 4)
        keys = sorted(expected)
        # One object damaged in the bucket, one name already taken in the target by other bytes.
        server.client().put_object(Bucket=bucket, Key=f"models/{keys[0]}", Body=b"damaged")
        for cached in cache_files(models_dir):
            cached.unlink()  # so the damage is what a fresh host would download
        local.mkdir()
        (local / keys[1]).write_bytes(b"someone else's file")

        result = migrate(app, "--to", str(local))
        assert result.exit_code == 1
        failures = [line for line in result.output.splitlines() if line.startswith("❌")]
        assert len(failures) == 2
        assert keys[0] in failures[0] and "does not match its expected SHA-256" in failures[0]
        assert keys[1] in failures[1] and "already exists with other bytes; left as it is" in failures[1]
        assert "2 object(s) failed" in result.output.splitlines()[-1]
        assert (local / keys[1]).read_bytes() == b"someone else's file"  # never overwritten
        assert not (local / keys[0]).exists()
        for key in keys[2:]:
            assert sha((local / key).read_bytes()) == expected[key]
            assert oct((local / key).stat().st_mode & 0o777) == "0o644"

        # Repaired: the object re-uploaded, the stray file moved away. The rerun finishes the job.
        (local / keys[1]).unlink()
        with app.app_context():
            db.session.execute(MLModel.__table__.delete().where(MLModel.model_path == keys[0]))
            db.session.commit()
        rerun = migrate(app, "--to", f"file://{local}")
        assert rerun.exit_code == 0, rerun.output
        assert "Copied 1 object(s)" in rerun.output and "2 already there" in rerun.output
        assert "Next: unset ML_STORE_URL and set ML_MODELS_DIR=" in rerun.output
        assert top_level_models(local) == set(keys[1:])
    finally:
        dbutil.dispose(app)

    home = dbutil.make_app(database_url, local)
    try:
        with home.app_context():
            assert get_model_manager().load_active("isolation_forest", "metric_1").source == "file"
    finally:
        dbutil.dispose(home)


@pytest.mark.parametrize("problem", ["missing_bucket", "wrong_secret"])
def test_a_bad_target_is_one_clear_line_and_nothing_is_copied(database_url, models_dir, aws, server, bucket,
                                                              monkeypatch, problem):
    app = dbutil.make_app(database_url, models_dir)
    try:
        save_models(app, 2)
        target = f"s3://{bucket}/models"
        if problem == "missing_bucket":
            target, words = "s3://no-such-bucket-here/models", "bucket 'no-such-bucket-here' does not exist"
        else:
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
            words = "SignatureDoesNotMatch); check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"
        for extra in ((), ("--dry-run",)):
            result = migrate(app, "--to", target, *extra)
            assert result.exit_code == 1
            assert result.output.count("\n") == 1 and result.output.startswith("Error: "), result.output
            assert words in result.output
        assert model_objects(server, bucket) == {}
        assert migrate(app, "--to", str(models_dir)).output.startswith("Error: --to ")  # the current store
    finally:
        dbutil.dispose(app)


def big(i: int) -> np.ndarray:
    # ~3 MiB of incompressible bytes per object: the copy takes long enough to be caught midway.
    return np.random.default_rng(i).random(400_000)


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_copy_cut_short_by_a_killed_s3_server_is_finished_by_running_it_again(
        backend, database_url, models_dir, tmp_path):
    with running_server(tmp_path / "s3") as srv:
        name = srv.create_bucket()
        app = dbutil.make_app(database_url, models_dir)
        try:
            expected = save_models(app, 6, payload=big)
        finally:
            dbutil.dispose(app)
        env = base_env(tmp_path, DATABASE_URL=database_url, ML_MODELS_DIR=str(models_dir), ML_ADMIN_TOKEN="t" * 24,
                       FLASK_APP="app:app", PYTHONPATH=str(ROOT), **srv.env())
        command = [str(Path(sys.executable).parent / "flask"), "ml", "migrate-store", "--to", f"s3://{name}/models"]
        objects_dir = srv.data_dir / name / "models"

        def copied() -> list[Path]:
            return [p for p in objects_dir.glob("*.pkl")] if objects_dir.exists() else []

        log = tmp_path / "first.log"
        first = start(command, env, log)
        try:
            # Polled every 5 ms, then the command is frozen before the server dies: at wait_until's 0.2 s
            # an idle machine once copied all six objects between the first one landing and the kill.
            deadline = time.monotonic() + 60
            while not copied():
                assert first.poll() is None and time.monotonic() < deadline, tail([log])
                time.sleep(0.005)
            os.killpg(first.pid, signal.SIGSTOP)  # nothing more lands while the server is killed
            try:
                srv.kill()  # SIGKILL, midway
            finally:
                os.killpg(first.pid, signal.SIGCONT)
            assert first.wait(timeout=90) == 1
        finally:
            stop_group(first)
        output = log.read_text()
        failed = [line for line in output.splitlines() if line.startswith("❌")]
        # One line per object that did not finish (an object whose PUT landed just before the kill
        # counts too: its read-back in the target did not happen).
        assert len(failed) >= 1, output
        assert all("failed after" in line or "S3" in line for line in failed), output
        assert "object(s) failed; fix the lines above and run the command again" in output

        srv.start()  # same data directory, same port
        assert 1 <= len(copied()) <= 5  # midway: some objects landed, some did not
        log = tmp_path / "second.log"
        second = start(command, env, log)
        try:
            assert second.wait(timeout=90) == 0, log.read_text()
        finally:
            stop_group(second)
        output = log.read_text()
        summary = re.search(r"Copied (\d+) object\(s\) .*; (\d+) already there, .* 0 failed", output)
        assert summary, output
        # A PUT the kill interrupted after it landed counted as failed (its read-back did not happen):
        # the rerun finds it whole and skips it. Nothing is copied twice, nothing is missing.
        copied_now, already = int(summary[1]), int(summary[2])
        assert copied_now + already == 6 and copied_now <= len(failed) and already >= 6 - len(failed)
        stored = model_objects(srv, name)
        assert {key.removeprefix("models/"): sha(data) for key, data in stored.items()} == expected
