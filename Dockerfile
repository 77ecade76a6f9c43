# The minibar ML service: gunicorn serving app:app, or any `flask ...` command
# (the compose `scheduler` service runs `flask ml scheduler` from this same image).
# Python 3.11 matches the development machine; the patch release is pinned so a
# rebuild gives the same interpreter.
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLASK_APP=app:app \
    ML_MODELS_DIR=/app/ml_models \
    PORT=5000

WORKDIR /app

# A fixed non-root uid/gid, so files on the ml_models volume keep one owner
# across image rebuilds.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin app

# Dependencies in their own layer: it is rebuilt only when requirements.txt
# changes. Every wheel we need (psycopg2-binary, numpy, scikit-learn) is
# prebuilt, so no compiler is installed.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The code stays owned by root (the service cannot modify itself); only the
# models directory and instance/ (the app creates it at start) belong to the
# service user. Mode 755 on ml_models as the spec asks; model files are 644.
COPY . .
RUN install -d -o app -g app -m 755 /app/ml_models /app/instance \
    && chmod 755 /app/docker/entrypoint.sh

# Declared after the directory is created and chowned: a new named volume is
# initialised from it, so it starts owned by the app user with mode 755.
VOLUME ["/app/ml_models"]

# Numeric, so the runtime (and a host inspecting the volume) can verify it is not root.
USER 10001:10001
EXPOSE 5000

# Liveness only (/health touches nothing else); /ready reports the database
# and the models directory. Python, because slim images have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "/app/docker/healthcheck.py", "/health"]

ENTRYPOINT ["/app/docker/entrypoint.sh"]
