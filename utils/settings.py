"""Every setting of the service in one table: its variable, parser, default (stated once) and meaning.

Settings are read when an app is created, not when a module is imported:
``create_app()`` calls :func:`utils.settings_load.load_settings` over ``os.environ`` (its
``test_config`` overrides), so an app built after the environment changed
sees the new values.  ``gunicorn.conf.py`` and the quick start
(``python -m utils.settings``) check the same table before anything starts,
with :func:`utils.settings_load.load_server_settings` for the web server's own
variables.

A bad value raises :class:`ConfigError`, whose ``line`` is the one line an
operator sees (``config error: ML_KEEP_VERSIONS='abc': expected a whole
number``) before the process exits with status 2.  Code outside an app
context that needs a setting reads the table's default with :func:`current`,
so no module repeats a default.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from utils import settings_notify as N
from utils.settings_parsers import (  # noqa: F401 (ConfigError, MIN_TOKEN_LENGTH: imported from here too)
    _admin_token,
    _bool,
    _choice,
    _database_url,
    _float,
    _floats,
    _hours,
    _int,
    _notify,
    _store_url,
    _text,
    ConfigError,
    MIN_TOKEN_LENGTH,
    Parser,
)

BASE_DIR = Path(__file__).resolve().parents[1]

# -------------------------------------------------------------------- table
@dataclass(frozen=True)
class Derived:
    """A default computed from the settings read before it (``values`` by config key)."""

    compute: Callable[[Mapping[str, Any]], Any]
    doc: str


@dataclass(frozen=True)
class Setting:
    env: str
    parse: Parser
    default: Any  # a parsed value, or a Derived
    doc: str
    key: Optional[str] = None  # the app.config key, when it is not the variable's name
    scope: str = "app"  # "app": app.config; "server": gunicorn and the quick start only
    secret: bool = False  # never echoed in an error line

    @property
    def config_key(self) -> str:
        return self.key or self.env


def _secret_key(values: Mapping[str, Any]) -> str:
    # Never the admin token: a cookie signed with it would let anyone test token guesses offline.
    return os.urandom(32).hex()


SETTINGS: tuple[Setting, ...] = (
    # The contract's names first.
    Setting("DATABASE_URL", _database_url, f"sqlite:///{BASE_DIR / 'instance' / 'ml.sqlite3'}",
            "metadata database; postgresql://... (psycopg2) in production", key="SQLALCHEMY_DATABASE_URI"),
    Setting("ML_MODELS_DIR", _text, str(BASE_DIR / "ml_models"), "model files (a path or file:// URL)"),
    Setting("ML_ENABLED", _bool, True, "false: no jobs, ML endpoints answer 503"),
    Setting("ML_SCHEDULER_ENABLED", _bool, False, "run the scheduled jobs in this process (gunicorn workers)"),
    Setting("ML_ADMIN_TOKEN", _admin_token, None,
            f"bearer token of the API and the dashboard sign-in, at least {MIN_TOKEN_LENGTH} characters; "
            "unset: they refuse"),
    Setting("ML_KEEP_VERSIONS", _int(1), 3, "versions kept per (model_type, metric_type) by cleanup"),
    Setting("ML_MAX_MODEL_MB", _float(0.001), 10.0, "largest model file saved or loaded"),
    Setting("SECRET_KEY", _text, Derived(_secret_key, "random per process"),
            "signs the dashboard session cookie; set it (equal in every worker and process), never to the token"),
    # The model store.
    # Off by default: the benchmarks show decompression costs more load time than it saves disk.
    Setting("ML_COMPRESS_MODELS", _bool, False, "write new models gzip-compressed (.pkl.gz)"),
    Setting("ML_LOAD_RETRY_DELAYS", _floats(), (1.0, 2.0, 4.0), "backoff for transient read errors (seconds)"),
    Setting("ML_CACHE_SIZE", _int(0), 32, "loaded models kept per process (0: no cache)"),
    Setting("ML_CACHE_TTL_SECONDS", _float(), 30.0,
            "a cached model is re-validated against the database at least this often"),
    # A save may be between its rename and its commit: younger orphans are left alone.
    Setting("ML_ORPHAN_GRACE_SECONDS", _float(), 3600.0, "files with no row younger than this survive cleanup"),
    Setting("ML_READY_MIN_FREE_MB", _float(0.0), 100.0, "/ready fails when the models directory has less free space"),
    Setting("ML_DISK_WARN_PERCENT", _float(0.0, 100.0), 90.0, "disk usage that logs disk_space_low"),
    # Several hosts: model bytes in one bucket, ML_MODELS_DIR becomes each host's bounded cache of it.
    Setting("ML_STORE_URL", _store_url, None,
            "s3://bucket/prefix on any S3-compatible server (credentials from AWS_*); unset: ML_MODELS_DIR"),
    Setting("ML_S3_CACHE_MB", _float(0.0), 256.0, "size bound of the local cache of S3 models (0: no disk cache)"),
    # Jobs and the scheduler.
    Setting("ML_SCAN_INTERVAL_SECONDS", _float(1.0), 3600.0, "anomaly_scan interval"),
    Setting("ML_TRAIN_INTERVAL_SECONDS", _float(1.0), 86400.0, "train_models interval"),
    Setting("ML_CLEANUP_INTERVAL_SECONDS", _float(1.0), 86400.0, "cleanup_models interval"),
    Setting("ML_SCHEDULER_HEARTBEAT_SECONDS", _float(0.1), 5.0, "how often locks and leadership are checked"),
    Setting("ML_SCHEDULER_LEASE_SECONDS", _float(1.0), 30.0,
            "SQLite: how long a lease lives unrenewed (takeover time after a dead leader)"),
    # Training and scans.  See README "Anomaly pipeline" for how 0.02 was chosen.
    Setting("ML_TRAIN_WINDOW_DAYS", _int(1), 60, "days of observations a model is trained on"),
    Setting("ML_MIN_TRAIN_SAMPLES", _int(2), 50, "fewer observations: the metric type is skipped"),
    Setting("ML_CONTAMINATION", _float(0.0001, 0.49), 0.02,
            "calibration target: the share of each entity's window that anchors its tail (not an alert quota)"),
    Setting("ML_FALSE_ALERTS_PER_ENTITY_DAY", _float(0.00001, 0.99), 0.003,
            "alert budget the per-entity thresholds are calibrated to on normal data"),
    Setting("ML_N_ESTIMATORS", _int(10), 100, "trees of each metric type's Isolation Forest"),
    Setting("ML_SCAN_BATCH_SIZE", _int(100), 20000, "observations scored per scan transaction"),
    # Reading the next batches on a second thread while this one scores lets a
    # scan use both cores (PostgreSQL; SQLite always reads in the scan's transaction).
    Setting("ML_SCAN_READ_AHEAD", _int(0, 16), 2,
            "scan batches read ahead on a second connection while one is scored (0: read in turn)"),
    # Scoring the next batch on its own thread while this one's alerts are written and committed
    # overlaps the numpy/forest work with the waits on the database.
    Setting("ML_SCAN_SCORE_AHEAD", _int(0, 4), 1,
            "scan batches scored ahead on a thread while the previous one is written (0: score in turn)"),
    # A row's causal score depends only on its own entity's rows, and the detector's numpy and
    # forest work mostly leaves the GIL free: a batch split by entity scores on both cores.
    Setting("ML_SCAN_SCORE_THREADS", _int(1, 8), 2,
            "threads a scan batch is scored on, split by entity (1: one thread)"),
    # The contract writes model_load_time rows into ml_metrics.  A database shared with
    # the minibar app: its ORM fails on a metric type outside its enum (README "legacy").
    Setting("ML_RECORD_LOAD_TIME", _bool, True,
            "each scan writes a model_load_time row to ml_metrics (false: the minibar app's ORM reads the table)"),
    Setting("ML_INCIDENT_GAP_HOURS", _float(0.01), 24.0,
            "an entity's alert at most this long after its previous one (observation time) joins its incident"),
    # Retention (the cleanup job; flask ml retention --dry-run counts); 0 keeps everything.
    # See README "Retention" for why these defaults; the rules against the
    # training window are checked in _check_together.
    Setting("ML_OBSERVATION_RETENTION_DAYS", _int(0),
            Derived(lambda v: max(180, v.get("ML_TRAIN_WINDOW_DAYS", 60) + 28), "180 (or ML_TRAIN_WINDOW_DAYS + 28)"),
            "ml_metrics rows older than this are deleted (0: never); at least ML_TRAIN_WINDOW_DAYS + 28"),
    Setting("ML_ALERT_RETENTION_DAYS", _int(0),
            Derived(lambda v: max(365, v.get("ML_TRAIN_WINDOW_DAYS", 60)), "365 (or ML_TRAIN_WINDOW_DAYS)"),
            "our closed alerts (read, false positive or resolved) older than this are deleted (0: never)"),
    Setting("ML_JOB_RUN_RETENTION_DAYS", _int(0), 90, "finished ml_job_runs rows older than this are deleted (0: never)"),
    Setting("ML_RETENTION_BATCH_SIZE", _int(100, 100000), 5000, "rows per DELETE statement (one short transaction each)"),
    # Migrations on a database the hotel app uses: give up waiting for a table
    # lock rather than stall its writes; the entrypoint's retry resumes.
    Setting("ML_MIGRATION_LOCK_TIMEOUT_SECONDS", _float(0.1), 10.0,
            "flask db upgrade waits at most this long for a table lock, then fails (and is retried)"),
    # Bounds on database calls (PostgreSQL; see utils/db_bounds.py).  Requests: a frozen
    # server costs a caller at most statement + 1 s, then the breaker answers 503 at once.
    Setting("ML_DB_CONNECT_TIMEOUT_SECONDS", _float(0.1), 3.0, "a new database connection is given up after this"),
    Setting("ML_DB_STATEMENT_TIMEOUT_SECONDS", _float(0.1), 3.0,
            "requests: server statement_timeout; the client gives up 1 s later (even on a frozen server)"),
    Setting("ML_DB_LOCK_TIMEOUT_SECONDS", _float(0.1), 2.0, "requests: server lock_timeout"),
    Setting("ML_DB_POOL_TIMEOUT_SECONDS", _float(0.1), 2.0, "longest wait for a pooled connection"),
    Setting("ML_DB_BREAKER_SECONDS", _float(0.0), 5.0,
            "after a missed client deadline, requests answer 503 at once for this long (0: off)"),
    Setting("ML_READY_TIMEOUT_SECONDS", _float(0.1), 2.0, "/ready gives up on the database after this"),
    Setting("ML_JOB_STATEMENT_TIMEOUT_SECONDS", _float(1.0), 600.0, "jobs: server statement_timeout (+1 s client deadline)"),
    Setting("ML_JOB_LOCK_TIMEOUT_SECONDS", _float(0.1), 30.0, "jobs: server lock_timeout"),
    # Monitoring, logs, the dashboard.
    Setting("ML_METRICS_PORT", _int(0, 65535), 0, "flask ml scheduler serves /metrics on this port (0: off)"),
    Setting("ML_METRICS_ADDR", _text, "0.0.0.0", "address of that metrics server"),
    Setting("ML_LOG_FORMAT", _choice("json", "text"), "json", "one JSON object per line, or text for people"),
    Setting("ML_LOG_REPEAT_WINDOW_SECONDS", _float(0.0), 10.0,
            "the same warning/error (logger, level, template) is logged at most 3 times per window (0: no limit)"),
    Setting("ML_LOG_LEVEL", _choice("debug", "info", "warning", "error", "critical"), "info", "root log level"),
    # Failed sign-ins and bearer tokens, counted per client address in the database (all workers).
    Setting("ML_AUTH_MAX_FAILURES", _int(1), 10, "failed authentications per client address per window"),
    Setting("ML_AUTH_WINDOW_SECONDS", _float(1.0), 300.0, "the window those failures are counted in"),
    Setting("ML_AUTH_LOCKOUT_SECONDS", _float(1.0), 900.0,
            "after too many failures the address gets 429 (Retry-After) for this long, right token or not"),
    Setting("ML_TRUSTED_PROXIES", _int(0, 5), 0,
            "reverse proxies in front of the app (Coolify: 1) whose X-Forwarded-For/-Proto/-Host/-Port count (0: none)"),
    Setting("ML_HSTS_SECONDS", _int(0), 31536000, "Strict-Transport-Security max-age on HTTPS responses (0: not sent)"),
    Setting("ML_DASHBOARD_SECURE_COOKIE", _bool, False, "mark the session cookie Secure (HTTPS only)",
            key="SESSION_COOKIE_SECURE"),
    Setting("ML_DASHBOARD_SESSION_HOURS", _hours(0.01), timedelta(hours=12), "dashboard sign-in lifetime (hours)",
            key="PERMANENT_SESSION_LIFETIME"),
    # Promotion gate (README "Promotion"): a challenger replaces the champion only if it passes these.
    Setting("ML_GATE_WINDOW_DAYS", _int(1), 7, "recent days both models are scored on by the gate and the comparison"),
    Setting("ML_GATE_MIN_LABELLED", _int(1), 20, "labelled recent observations needed to judge by F1 (fewer: by rates)"),
    Setting("ML_GATE_MAX_F1_DROP", _float(0.0, 1.0), 0.05, "with labels: challenger F1 may be at most this below the champion's"),
    Setting("ML_GATE_MAX_RATE_RATIO", _float(1.0), 2.0,
            "without labels: alert rate within this factor of the champion's and of the target (causal detector: "
            "at most this factor of ML_FALSE_ALERTS_PER_ENTITY_DAY; pooled model: ML_CONTAMINATION)"),
    Setting("ML_GATE_MAX_SCORE_SHIFT", _float(0.0, 1.0), 0.3,
            "without labels: largest KS distance between the two models' score distributions"),
    Setting("ML_GATE_MIN_AGREEMENT", _float(0.0, 1.0), 0.5,
            "without labels: smallest Jaccard overlap of the observations both models flag"),
    # Drift (README "Drift"): recent features against the champion's training window.
    Setting("ML_DRIFT_INTERVAL_SECONDS", _float(1.0), 21600.0, "drift_check interval"),
    Setting("ML_DRIFT_WINDOW_DAYS", _int(1), 7, "recent days compared with the champion's training window"),
    Setting("ML_DRIFT_MIN_SAMPLES", _int(2), 30, "fewer recent observations: no drift report for that type"),
    Setting("ML_DRIFT_PSI_THRESHOLD", _float(0.0), 0.25, "PSI above this is drift and triggers one retraining"),
    Setting("ML_DRIFT_KS_THRESHOLD", _float(0.0, 1.0), 0.3, "KS distance above this is drift too"),
    # Notifications (README "Notifications"): an outbox delivered by the leader process.
    Setting("ML_NOTIFY_MIN_SEVERITY", _notify(N.severity), "high",
            "incidents below this severity are not notified (info, low, medium, high, critical)"),
    Setting("ML_NOTIFY_WEBHOOK_URL", _notify(N.url), None,
            "webhook channel: POST a signed JSON body here; unset = channel off"),
    Setting("ML_NOTIFY_WEBHOOK_SECRET", _notify(N.secret), None,
            "HMAC-SHA256 key of the X-ML-Signature header; required with the URL, 16+ characters", secret=True),
    Setting("ML_NOTIFY_SMTP_HOST", _notify(N.host), None, "e-mail channel: SMTP server; unset = channel off"),
    Setting("ML_NOTIFY_SMTP_PORT", _notify(N.port), 587, "SMTP port"),
    Setting("ML_NOTIFY_SMTP_STARTTLS", _notify(N.boolean), True,
            "upgrade the SMTP connection with STARTTLS (certificate verified)"),
    Setting("ML_NOTIFY_SMTP_CA_FILE", _notify(N.ca_file), None,
            "PEM CA bundle that signs the SMTP server's certificate; unset = system CAs"),
    Setting("ML_NOTIFY_SMTP_USER", _notify(N.one_line), None,
            "SMTP AUTH user; unset = no AUTH (needs STARTTLS when set)"),
    Setting("ML_NOTIFY_SMTP_PASSWORD", _notify(N.one_line), None, "SMTP AUTH password; required with the user",
            secret=True),
    Setting("ML_NOTIFY_SMTP_FROM", _notify(N.address), None, "sender address; required with the host"),
    Setting("ML_NOTIFY_SMTP_TO", _notify(N.addresses), None, "comma-separated recipients; required with the host"),
    Setting("ML_NOTIFY_RATE_PER_HOUR", _notify(N.int_at_least(1)), 30,
            "messages per channel in any hour; what is held back goes out as one digest"),
    Setting("ML_NOTIFY_MAX_ATTEMPTS", _notify(N.int_at_least(1)), 8, "sends tried per message before it is marked dead"),
    Setting("ML_NOTIFY_RETRY_BASE_SECONDS", _notify(N.seconds(0.001)), 30.0,
            "first retry delay; doubles per attempt, with jitter"),
    Setting("ML_NOTIFY_RETRY_MAX_SECONDS", _notify(N.seconds(0.001)), 3600.0, "longest retry delay"),
    Setting("ML_NOTIFY_CONNECT_TIMEOUT_SECONDS", _notify(N.seconds(0.1)), 5.0, "connect timeout (webhook and SMTP)"),
    Setting("ML_NOTIFY_READ_TIMEOUT_SECONDS", _notify(N.seconds(0.1)), 15.0,
            "timeout of each read or write after connecting"),
    Setting("ML_NOTIFY_LEASE_SECONDS", _notify(N.seconds(1.0)), 120.0,
            "a claimed message is re-sent by another sender if not finished by then; above connect + read timeouts"),
    Setting("ML_NOTIFY_BATCH_SIZE", _notify(N.int_at_least(1)), 100,
            "messages looked at per channel and delivery pass"),
    Setting("ML_NOTIFY_DELIVER_INTERVAL_SECONDS", _notify(N.seconds(1.0)), 30.0,
            "how often the leader process delivers due messages (the notify_deliver job)"),
    # The web server (gunicorn.conf.py); checked by the quick start before any setup work.
    Setting("PORT", _int(1, 65535), 5000, "port gunicorn binds when GUNICORN_BIND is not set", scope="server"),
    Setting("GUNICORN_BIND", _text, Derived(lambda v: f"0.0.0.0:{v['PORT']}", "0.0.0.0:$PORT"),
            "address gunicorn listens on", scope="server"),
    Setting("GUNICORN_WORKERS", _int(1), 2, "worker processes", scope="server"),
    Setting("GUNICORN_THREADS", _int(1), 4, "threads per worker", scope="server"),
    Setting("GUNICORN_TIMEOUT", _int(0), 60, "seconds a silent worker lives (0: forever)", scope="server"),
    Setting("GUNICORN_GRACEFUL_TIMEOUT", _int(0), 20, "seconds to finish requests on shutdown", scope="server"),
    Setting("GUNICORN_ACCESSLOG", _text, "-", "access log file (-: stdout)", scope="server"),
    Setting("GUNICORN_CONTROL_SOCKET", _text, "", "gunicornc control socket (empty: off)", scope="server"),
)

# Flask and Flask-SQLAlchemy settings that are not meant to vary by deployment.
FIXED: dict[str, Any] = {
    "SQLALCHEMY_TRACK_MODIFICATIONS": False,
    # Dashboard sign-in cookie: not readable by scripts, not sent on cross-site POSTs.
    "SESSION_COOKIE_HTTPONLY": True,
    "SESSION_COOKIE_SAMESITE": "Lax",
}

_BY_KEY = {setting.config_key: setting for setting in SETTINGS}


def default_of(key: str) -> Any:
    """The table's default of config key ``key`` (computed for a derived one)."""
    default = _BY_KEY[key].default
    return default.compute({}) if isinstance(default, Derived) else default


def current(key: str) -> Any:
    """``key`` from the current app's config, or the table's default outside an app context."""
    from flask import current_app, has_app_context

    if has_app_context() and key in current_app.config:
        return current_app.config[key]
    return default_of(key)


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m utils.settings``: check every setting in the environment (exit 2 naming the first bad one)."""
    from utils.settings_load import load_server_settings, load_settings  # it builds on this module's table

    try:
        load_settings(os.environ)
        load_server_settings(os.environ)
    except ConfigError as exc:
        print(exc.line, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
