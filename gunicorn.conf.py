"""gunicorn settings for the quick start and the container (env-driven).

No ``preload_app``: every worker imports the app after the fork, so no
database connection or scheduler thread is ever shared across processes.
"""
import os
import shutil
import tempfile

bind = os.environ.get("GUNICORN_BIND", f"0.0.0.0:{os.environ.get('PORT', '5000')}")
workers = int(os.environ.get("GUNICORN_WORKERS", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "60"))
graceful_timeout = int(os.environ.get("GUNICORN_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"
# gunicorn's control socket (for gunicornc) defaults to one fixed path per user,
# $HOME/.gunicorn/gunicorn.ctl: several masters on a host would take it from each
# other, and the container's non-root user cannot create it under /app. Opt in
# with an explicit path.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
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
    # Every worker competes for scheduler leadership (when ML_SCHEDULER_ENABLED
    # and ML_ENABLED are true); started here, after the fork, never at import.
    from utils.ml.scheduler import start_for_web_worker

    start_for_web_worker(worker.wsgi)


def worker_exit(server, worker):
    # Runs in the worker process on any exit: release leadership at once.
    from utils.ml.scheduler import stop_for_web_worker

    stop_for_web_worker(getattr(worker, "wsgi", None))
