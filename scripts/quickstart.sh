#!/usr/bin/env bash
# Quick start (called by `make run`, after `make setup` has built .venv):
#   SQLite database under instance/, model files in ./ml_models, an admin token,
#   `flask db upgrade`, demo data (only into an empty database), training, a first
#   scan, then gunicorn on 127.0.0.1:5000 with the scheduler on.
# Every setting can be overridden from the environment (DATABASE_URL, ML_MODELS_DIR,
# ML_ADMIN_TOKEN, PORT or GUNICORN_BIND, GUNICORN_WORKERS, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"
BIN="$ROOT/.venv/bin"

if [ ! -x "$BIN/gunicorn" ] || [ ! -x "$BIN/flask" ]; then
  echo "quickstart: $BIN has no flask/gunicorn; run 'make setup' (or 'make run') first" >&2
  exit 1
fi

# Every setting (PORT and GUNICORN_* included) is checked before any setup work:
# a bad one stops here with one line, "config error: NAME='value': rule", exit status 2.
"$BIN/python" -m utils.settings

mkdir -p instance
export FLASK_APP=app:app
export DATABASE_URL="${DATABASE_URL:-sqlite:///$ROOT/instance/ml.sqlite3}"
export ML_MODELS_DIR="${ML_MODELS_DIR:-./ml_models}"

# The admin token: the environment's, else the one saved by an earlier quick
# start, else a new one saved (readable by this user only) for next time.
TOKEN_FILE="instance/admin_token"
if [ -z "${ML_ADMIN_TOKEN:-}" ]; then
  if [ -s "$TOKEN_FILE" ]; then
    ML_ADMIN_TOKEN="$(cat "$TOKEN_FILE")"
    TOKEN_ORIGIN="read from $TOKEN_FILE"
  else
    ML_ADMIN_TOKEN="$("$BIN/python" -c 'import secrets; print(secrets.token_urlsafe(32))')"
    (umask 077 && printf '%s\n' "$ML_ADMIN_TOKEN" > "$TOKEN_FILE")
    TOKEN_ORIGIN="generated, saved in $TOKEN_FILE"
  fi
else
  TOKEN_ORIGIN="from the environment"
fi
export ML_ADMIN_TOKEN

# The key that signs the dashboard cookie: its own random value, never the
# token (a cookie signed with the token would let anyone test guesses offline).
# Kept in instance/ (this user only), so sign-ins survive a restart.
SECRET_FILE="instance/secret_key"
if [ -z "${SECRET_KEY:-}" ]; then
  if [ ! -s "$SECRET_FILE" ]; then
    (umask 077 && "$BIN/python" -c 'import secrets; print(secrets.token_hex(32))' > "$SECRET_FILE")
  fi
  SECRET_KEY="$(cat "$SECRET_FILE")"
fi
export SECRET_KEY

# Setup steps log only warnings; their results are printed as tables.
step() { echo; echo "==> $*"; }
flask_quiet() { ML_LOG_LEVEL="${ML_LOG_LEVEL:-WARNING}" "$BIN/flask" "$@"; }

step "database: flask db upgrade (${DATABASE_URL})"
flask_quiet db upgrade
step "demo data (only if there are no observations yet)"
flask_quiet ml demo-data --if-empty
step "training: flask ml train"
flask_quiet ml train
step "first scan: flask ml scan"
flask_quiet ml scan

export ML_SCHEDULER_ENABLED=true
PORT="${PORT:-5000}"
export GUNICORN_BIND="${GUNICORN_BIND:-127.0.0.1:$PORT}"
BASE="http://${GUNICORN_BIND}"

cat <<EOF

==> serving on ${BASE} (gunicorn, scheduler on; Ctrl-C stops)
    admin token (${TOKEN_ORIGIN}):
        ${ML_ADMIN_TOKEN}
    look at:
        ${BASE}/health                  the process is up
        ${BASE}/ready                   database and models directory checks
        ${BASE}/ml/dashboard            models, alerts, load times (sign in with the token)
        ${BASE}/metrics                 Prometheus
        ${BASE}/api/ml/...              JSON API: models, alerts, train, scan (openapi.json lists them)
    the API wants the token:
        curl -H "Authorization: Bearer ${ML_ADMIN_TOKEN}" ${BASE}/api/ml/alerts
        curl -X POST -H "Authorization: Bearer ${ML_ADMIN_TOKEN}" ${BASE}/api/ml/scan
    database: ${DATABASE_URL}
    models:   ${ML_MODELS_DIR}
EOF

exec "$BIN/gunicorn" -c gunicorn.conf.py app:app
