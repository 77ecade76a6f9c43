"""The README's REST API examples, run as written with curl against a live gunicorn.

The bash block of the "REST API" section is executed by bash, with only the
base URL and the example ids (42, 41, 17, 9) replaced by the port and the rows of
this test's database.  Every curl must answer 2xx with JSON, and together they
must touch every route of the API.
"""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests import dbutil, procutil
from tests.ml_helpers import make_model
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.ml.incidents.models import MLIncident
from utils.models import MLAlert
from utils.time import utcnow
from utils.web.api import OPERATIONS

README = procutil.ROOT / "README.md"
TOKEN = "readme-token-0123456789abcdef"


def readme_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## REST API\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the REST API section has no bash block"
    return match.group(1)


def seed(database_url: str, models_dir: Path) -> dict[str, int]:
    app = dbutil.make_app(database_url, models_dir)
    try:
        with app.app_context():
            manager = get_model_manager()
            older, newer = (manager.save_model(make_model(i), "isolation_forest", "stok_seviye").id for i in range(2))
            now = utcnow()
            incident = MLIncident(metric_type="stok_seviye", entity_id=3, started_at=now, ended_at=now,
                                  alert_count=1, severity="high", peak_value=500.0)
            db.session.add(incident)
            db.session.flush()
            alert = MLAlert(metric_type="stok_seviye", entity_id=3, metric_value=500.0, severity="high",
                            method="z_score", incident_id=incident.id)
            db.session.add(alert)
            db.session.commit()
            ids = {"42": newer, "41": older, "17": alert.id, "9": incident.id}
            db.session.remove()
    finally:
        dbutil.dispose(app)
    return ids


def test_every_readme_curl_example_works(database_url, models_dir, tmp_path):
    ids = seed(database_url, models_dir)
    port = procutil.free_port()
    env = procutil.base_env(tmp_path, DATABASE_URL=database_url, ML_MODELS_DIR=str(models_dir),
                            ML_ADMIN_TOKEN=TOKEN, ML_SCHEDULER_ENABLED="false", GUNICORN_WORKERS="1",
                            GUNICORN_BIND=f"127.0.0.1:{port}", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))
    log = tmp_path / "gunicorn.log"
    server = procutil.start([str(procutil.VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "app:app"], env, log)
    try:
        procutil.wait_until(lambda: procutil.http_status(f"http://127.0.0.1:{port}/health") == 200, 60,
                            "gunicorn to answer /health", procs=[server], logs=[log])
        script = readme_block().replace("http://127.0.0.1:5000", f"http://127.0.0.1:{port}")
        for example, real in ids.items():
            script = re.sub(rf"/(models|alerts|incidents)/{example}\b", lambda m: f"/{m.group(1)}/{real}", script)
        out = tmp_path / "responses"
        out.mkdir()
        # Each curl records its method, URL, status and body; the commands themselves run unchanged.
        wrapper = f'''set -eu
n=0
curl() {{
  n=$((n + 1))
  command curl -sS -o "{out}/$n.body" -w "%{{http_code}} %{{method}} %{{url_effective}}\\n" "$@" >> "{out}/index"
}}
'''
        done = subprocess.run(["bash", "-c", wrapper + script], env={**env, "ML_ADMIN_TOKEN": TOKEN},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        lines = (out / "index").read_text().splitlines()
        called = set()
        for number, line in enumerate(lines, start=1):
            status, method, url = line.split(" ", 2)
            body = json.loads((out / f"{number}.body").read_text())
            assert status.startswith("2"), (line, body)
            path = url.split("?")[0].split(f":{port}", 1)[1]
            called.add((method, re.sub(r"/\d+(?=/|$)", "/<id>", path)))
        routes = {(op.method, re.sub(r"<[^>]+>", "<id>", op.rule)) for op in OPERATIONS}
        assert called == routes, f"routes without a README example: {routes - called}"
        assert len(lines) == len(re.findall(r"^curl ", readme_block(), re.M))
    finally:
        procutil.stop_group(server)
