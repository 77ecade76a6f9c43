"""The dashboard in a real browser: Playwright driving Debian's Chromium.

The app is served by a real HTTP server (werkzeug, in a thread) on a free
port, on both databases.  The browser signs in, sees the models table and
the three charts, rolls ``stok_seviye`` back to its previous version, sees
the active version change, and saves a screenshot to ``test-artifacts/``
(``UPDATE_DOCS_SCREENSHOT=1`` also refreshes ``docs/dashboard.png``, the
README's picture).  Chromium comes from ``scripts/ensure_test_tools.sh``;
``playwright install`` is never run.
"""
from __future__ import annotations

import os
import random
import shutil
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from werkzeug.serving import make_server

from tests.ml_helpers import make_model
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.models import JobRun, MLAlert, MLMetric, MLModel, ModelActivation
from utils.time import utcnow

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ARTIFACTS = ROOT / "test-artifacts"
METRIC_TYPES = ("stok_seviye", "tuketim_miktar", "dolum_sure")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not os.access(CHROMIUM, os.X_OK):
        message = f"{CHROMIUM} is missing: run scripts/ensure_test_tools.sh"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with sync_api.sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def server(app):
    """The app on a real HTTP server at a free port; stopped after the test."""
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


def seed_activity(app) -> dict[str, list[int]]:
    """Three versions per metric type, two weeks of alerts, two days of scans, job runs."""
    rng = random.Random(6)
    now = utcnow()
    ids: dict[str, list[int]] = {}
    with app.app_context():
        manager = get_model_manager()
        for n, metric_type in enumerate(METRIC_TYPES):
            ids[metric_type] = []
            for version in range(3):
                labelled = metric_type != "dolum_sure"  # no labelled data: metrics stay NULL
                row = manager.save_model(
                    make_model(seed=10 * n + version), "isolation_forest", metric_type,
                    accuracy=round(0.86 + 0.03 * version, 3) if labelled else None,
                    precision=round(0.71 + 0.05 * version, 3) if labelled else None,
                    recall=round(0.64 + 0.04 * version, 3) if labelled else None,
                    training_date=now - timedelta(days=2 - version, hours=n),
                )
                ids[metric_type].append(row.id)
        for day in range(14):
            for metric_type, rate in zip(METRIC_TYPES, (4, 2, 1)):
                for _ in range(rng.randint(0, rate * 2)):
                    db.session.add(MLAlert(
                        metric_type=metric_type, metric_value=rng.uniform(0, 40), severity="high",
                        method=rng.choice(("isolation_forest_file", "z_score")),
                        detected_at=now - timedelta(days=day, minutes=rng.randint(0, 600)),
                    ))
        for hour in range(48):
            for metric_type in METRIC_TYPES:
                fallback = rng.random() < (0.5 if 20 <= hour <= 24 else 0.05)
                source = "none" if fallback else ("cache" if rng.random() < 0.8 else "file")
                db.session.add(MLMetric(
                    metric_type="model_load_time",
                    metric_value=rng.uniform(0.05, 0.4) if source == "cache" else rng.uniform(4, 18),
                    timestamp=now - timedelta(hours=hour),
                    extra_data={"model_type": "isolation_forest", "metric_type": metric_type, "source": source,
                                "method": "z_score" if fallback else "isolation_forest_file",
                                "fallback_reasons": ["isolation_forest_file: file_missing"] if fallback else []},
                ))
        for job, seconds, status in (("anomaly_scan", 4, "success"), ("train_models", 38, "success"),
                                     ("cleanup_models", 1, "success")):
            db.session.add(JobRun(job_name=job, scheduled_for=now - timedelta(minutes=20),
                                  started_at=now - timedelta(minutes=20),
                                  finished_at=now - timedelta(minutes=20) + timedelta(seconds=seconds),
                                  status=status, host="ml-web-1", pid=4242))
        db.session.commit()
        db.session.remove()
    return ids


def test_sign_in_see_charts_roll_back_and_screenshot(app, server, browser, backend):
    ids = seed_activity(app)
    previous, current = ids["stok_seviye"][1], ids["stok_seviye"][2]
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    # Anything the Content-Security-Policy blocks (an inline style, a script) is reported on the console.
    blocked: list[str] = []
    page.on("console", lambda message: blocked.append(message.text)
            if "Content Security Policy" in message.text else None)
    try:
        page.goto(f"{server}/ml/dashboard")
        assert "/ml/dashboard/login" in page.url
        page.fill("#token", "wrong")
        page.click("button[type=submit]")
        assert "Wrong admin token" in page.inner_text(".error")
        page.fill("#token", app.config["ML_ADMIN_TOKEN"])
        page.click("button[type=submit]")
        page.wait_for_selector("#active-models table")

        active_row = page.locator('#active-models tr[data-type="isolation_forest/stok_seviye"]')
        assert active_row.locator(".active-id").inner_text() == f"#{current}"
        assert page.locator("#active-models tbody tr").count() == len(METRIC_TYPES)
        assert "—, no labels" in page.locator('#active-models tr[data-type="isolation_forest/dolum_sure"]').inner_text()
        # The three charts are drawn: bars for alerts, lines for latency and fallback rate.
        for chart in ("#chart-alerts", "#chart-latency", "#chart-fallback"):
            box = page.locator(f"{chart} svg.chart").bounding_box()
            assert box and box["width"] > 200 and box["height"] > 80, chart
        assert page.locator("#chart-alerts svg rect.bar").count() > 10
        assert page.locator("#chart-latency svg polyline").count() >= 2
        assert page.locator("#chart-fallback svg polyline").count() == 1
        assert "anomaly_scan" in page.inner_text("#jobs")
        # The CSS applies under the CSP: the legend swatches are 10 px squares in the series' colours.
        swatch = page.locator("#chart-alerts .legend .swatch").first.bounding_box()
        assert swatch and round(swatch["width"]) == 10 and round(swatch["height"]) == 10
        assert page.locator("svg.meter rect.meter-used").count() == 1
        assert blocked == []

        # Roll stok_seviye back to the version before the active one.
        version_row = page.locator(f'#versions tr[data-model-id="{previous}"]')
        assert version_row.locator("button").inner_text() == "Roll back"
        version_row.locator("button").click()
        page.wait_for_selector(".flash")
        assert f"Model {previous} is now the active isolation_forest/stok_seviye (was {current})" \
            in page.inner_text(".flash")
        assert active_row.locator(".active-id").inner_text() == f"#{previous}"
        assert page.locator(f'#versions tr[data-model-id="{previous}"] .badge').inner_text() == "active"

        ARTIFACTS.mkdir(exist_ok=True)
        shot = ARTIFACTS / f"dashboard-{backend}.png"
        page.goto(f"{server}/ml/dashboard")
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 20_000
        assert blocked == []
        if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1" and backend == "postgresql":
            (ROOT / "docs").mkdir(exist_ok=True)
            shutil.copyfile(shot, ROOT / "docs" / "dashboard.png")
    finally:
        page.close()

    with app.app_context():
        assert db.session.execute(
            select(MLModel.id).where(MLModel.metric_type == "stok_seviye", MLModel.is_active.is_(True))
        ).scalar_one() == previous
        audit = db.session.execute(select(ModelActivation).order_by(ModelActivation.id.desc())).scalars().first()
        assert (audit.actor, audit.from_model_id, audit.to_model_id) == ("dashboard", current, previous)
        db.session.remove()
