"""/health and /ready against real databases and a real models directory."""
import json
import os
import subprocess

import pytest


def test_health_is_ok(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_ready_when_database_and_directory_are_fine(client):
    response = client.get("/ready")
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["checks"]["database"]["ok"] is True
    assert body["checks"]["models_dir"]["ok"] is True


def test_ready_503_names_the_models_directory_when_it_is_not_writable(app, client, tmp_path):
    # A read-only tmpfs: a real unwritable directory even for root.
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        app.config["ML_MODELS_DIR"] = str(ro)
        app.config["ML_READY_MIN_FREE_MB"] = 0  # the 1 MB tmpfs: this test is about the write
        response = client.get("/ready")
        body = response.get_json()
        assert response.status_code == 503
        assert body["failed"] == ["models_dir"]
        assert "not writable" in body["checks"]["models_dir"]["error"]
        assert str(ro) not in response.get_data(as_text=True)  # /ready is unauthenticated: no path
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_ready_503_names_the_database_when_it_does_not_answer(tmp_path, models_dir):
    from tests import dbutil

    # A port nothing listens on: the connection is really refused.
    app = dbutil.make_app("postgresql+psycopg2://postgres@127.0.0.1:1/none", models_dir)
    response = app.test_client().get("/ready")
    body = response.get_json()
    assert response.status_code == 503
    assert body["failed"] == ["database"]
    assert "OperationalError" in body["checks"]["database"]["error"]
    # /ready is unauthenticated: neither the database host nor the models path is shown.
    text = response.get_data(as_text=True)
    assert "127.0.0.1" not in text and str(models_dir) not in text and "path" not in body["checks"]["models_dir"]


def test_errors_are_json_not_html(client):
    response = client.get("/no-such-page")
    assert response.status_code == 404
    assert response.is_json
    assert "error" in response.get_json()


def test_ready_503_below_the_free_space_threshold_and_on_a_full_disk(app, client, tmp_path):
    # A real 2 MB tmpfs, filled for real: creating an empty file still works there, a 1-byte write does not.
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        app.config["ML_MODELS_DIR"] = str(small)
        app.config["ML_READY_MIN_FREE_MB"] = 1
        assert client.get("/ready").status_code == 200
        app.config["ML_READY_MIN_FREE_MB"] = 10
        body = client.get("/ready").get_json()
        assert body["failed"] == ["models_dir"] and "below ML_READY_MIN_FREE_MB=10" in body["checks"]["models_dir"]["error"]

        app.config["ML_READY_MIN_FREE_MB"] = 0  # now only the write decides
        with open(small / "filler", "wb") as filler:
            try:
                while True:
                    filler.write(b"x" * 65536)
                    filler.flush()
            except OSError:
                pass
        (small / "empty-still-works").touch()
        response = client.get("/ready")
        body = response.get_json()
        assert response.status_code == 503 and body["failed"] == ["models_dir"]
        assert "1-byte write" in body["checks"]["models_dir"]["error"]
        assert str(small) not in json.dumps(body)  # unauthenticated: no paths
    finally:
        subprocess.run(["umount", str(small)], check=True)
