"""gunicorn settings for the quick start and the container, from the one table of settings.

Read by the master before it binds or forks: every setting (the app's and the
server's: ``PORT``, ``GUNICORN_*``, see :mod:`utils.settings`) is checked
here, so a bad value stops gunicorn at once with one line (``config error:
...``) and exit status 2, instead of every worker failing to boot.

No ``preload_app``: every worker imports the app after the fork, so no
database connection or scheduler thread is ever shared across processes.
"""
import os
import shutil
import sys
import tempfile

# gunicorn puts its working directory on sys.path; this file's directory is the project's.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from utils.settings import ConfigError  # noqa: E402
from utils.settings_load import load_server_settings, load_settings  # noqa: E402

try:
    load_settings(os.environ)
    _server = load_server_settings(os.environ)
except ConfigError as _exc:
    print(_exc.line, file=sys.stderr, flush=True)
    sys.exit(2)

# No SECRET_KEY: each worker would draw its own random one, so a sign-in made on one
# worker would be refused by the others.  The master draws one before it forks and
# every worker inherits it (sign-ins then last until gunicorn restarts).
if not os.environ.get("SECRET_KEY"):
    import secrets

    os.environ["SECRET_KEY"] = secrets.token_hex(32)
    print("SECRET_KEY is not set: the workers share a key drawn at start-up; "
          "sign-ins end when gunicorn restarts (set SECRET_KEY to keep them)", file=sys.stderr, flush=True)

bind = _server["GUNICORN_BIND"]
workers = _server["GUNICORN_WORKERS"]
threads = _server["GUNICORN_THREADS"]
timeout = _server["GUNICORN_TIMEOUT"]
graceful_timeout = _server["GUNICORN_GRACEFUL_TIMEOUT"]
keepalive = 5
accesslog = _server["GUNICORN_ACCESSLOG"]
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
# gunicorn's control socket (for gunicornc) defaults to one fixed path per user,
# $HOME/.gunicorn/gunicorn.ctl: several masters on a host would take it from each
# other, and the container's non-root user cannot create it under /app. Opt in
# with an explicit path.
control_socket = _server["GUNICORN_CONTROL_SOCKET"]
control_socket_disable = not control_socket


def on_starting(server):
    # prometheus_client multiprocess mode: one fresh directory per master.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="ml-prom-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)


def child_exit(server, worker):
    try:
        from prometheus_client import multiprocess
    except ImportError:  # pragma: no cover
        return
    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    # Stop signals end the worker's loop instead of raising SystemExit wherever the
    # main thread is (see utils.ml.jobs.interrupt.guard_worker_signals): first.
    from utils.ml.jobs.interrupt import guard_worker_signals

    guard_worker_signals(worker)
    # Every worker competes for scheduler leadership (when ML_SCHEDULER_ENABLED
    # and ML_ENABLED are true); started here, after the fork, never at import.
    from utils.ml.jobs.scheduler import start_for_web_worker

    start_for_web_worker(worker.wsgi)


def worker_exit(server, worker):
    # Runs in the worker process on any exit: interrupt jobs, release leadership at once.
    from utils.ml.jobs.scheduler import stop_for_web_worker

    stop_for_web_worker(getattr(worker, "wsgi", None))
    # A clean exit (SystemExit 0) has nothing left to do: skip the interpreter's teardown,
    # which with numpy/scikit-learn loaded took 3-5 s of CPU on a busy host and made
    # every stop miss its 5 s bound.  Any other exit (a boot error's status 3, a crash)
    # goes the normal way, so gunicorn still sees its status.
    exc = sys.exc_info()[1]
    if isinstance(exc, SystemExit) and exc.code in (0, None):
        import logging

        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
