#!/usr/bin/env bash
# Container entry point of the minibar ML image (the tests also run it as a plain process).
#
#   0. check every setting (python -m utils.settings): a bad one exits 2 with one line
#   1. wait until the database accepts connections   (at most DB_WAIT_TIMEOUT seconds)
#   2. flask db upgrade, retried while the database finishes starting
#                                                     (MIGRATE_ATTEMPTS tries, MIGRATE_RETRY_DELAY apart)
#   3. exec gunicorn -c gunicorn.conf.py app:app      (workers/threads/timeouts from GUNICORN_* and PORT)
#      or, when arguments are given, exec them instead (the compose `scheduler` service: flask ml scheduler).
#
# Concurrent upgrades from several containers are safe: migrations/env.py holds a
# PostgreSQL advisory lock while migrating, so the second one waits and finds nothing to do.
# On a database shared with the minibar app (LEGACY.md states A-D) the same upgrade adopts its
# tables; a revision that cannot get a table lock within ML_MIGRATION_LOCK_TIMEOUT_SECONDS
# (the app in a long transaction) fails rather than stall the app, and the retry below runs it
# again: each revision commits on its own, so a retry resumes where the last one stopped.
# `exec` makes gunicorn replace this shell: it receives SIGTERM itself and shuts down
# gracefully (GUNICORN_GRACEFUL_TIMEOUT), exiting 0.
set -Eeuo pipefail

cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."

DB_WAIT_TIMEOUT="${DB_WAIT_TIMEOUT:-60}"
DB_WAIT_INTERVAL="${DB_WAIT_INTERVAL:-1}"
MIGRATE_ATTEMPTS="${MIGRATE_ATTEMPTS:-5}"
MIGRATE_RETRY_DELAY="${MIGRATE_RETRY_DELAY:-3}"
export FLASK_APP="${FLASK_APP:-app:app}"

log() {
    printf '%s entrypoint: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

# Until the exec below, this shell may be PID 1, which ignores signals it has
# no handler for. Steps run in the background and are waited on, so a stop
# request during startup is acted on at once: the step is stopped and we exit.
child=0
on_signal() {
    log "received SIG$1 during startup; stopping"
    if [ "$child" -ne 0 ]; then
        kill -TERM "$child" 2>/dev/null || true
        wait "$child" 2>/dev/null || true
    fi
    exit "$2"
}
trap 'on_signal TERM 143' TERM
trap 'on_signal INT 130' INT

step() {
    "$@" &
    child=$!
    local status=0
    wait "$child" || status=$?
    child=0
    return "$status"
}

# Every setting is checked first: a bad one stops the container with one line
# ("config error: NAME='value': rule") and exit status 2, before anything waits or migrates.
if ! step python -m utils.settings; then
    log "giving up: a setting is invalid (see the line above)"
    exit 2
fi

log "waiting up to ${DB_WAIT_TIMEOUT}s for the database"
if ! step python -m utils.db_wait --timeout "$DB_WAIT_TIMEOUT" --interval "$DB_WAIT_INTERVAL"; then
    log "giving up: the database did not come up within ${DB_WAIT_TIMEOUT}s (check DATABASE_URL and the db service)"
    exit 1
fi

attempt=1
until step flask db upgrade; do
    if [ "$attempt" -ge "$MIGRATE_ATTEMPTS" ]; then
        log "giving up: flask db upgrade failed ${attempt} times (see the error above)"
        exit 1
    fi
    log "flask db upgrade failed (attempt ${attempt}/${MIGRATE_ATTEMPTS}); retrying in ${MIGRATE_RETRY_DELAY}s"
    attempt=$((attempt + 1))
    step sleep "$MIGRATE_RETRY_DELAY"
done
log "database schema is at head"

trap - TERM INT
if [ "$#" -gt 0 ]; then
    log "starting: $*"
    exec "$@"
fi
log "starting gunicorn on port ${PORT:-5000}"
exec gunicorn -c gunicorn.conf.py app:app
