"""The dashboard's promotion parts: a rollback pins (shown with who and why), unpin, the comparison page
with its SVG histograms, the drift chart.  Real app, real forms (CSRF), real database; no script on any page."""
from __future__ import annotations

import re
from datetime import timedelta

from tests.dashboard_helpers import sign_in
from tests.pipeline_helpers import small_hotel
from utils.extensions import db
from utils.ml.jobs import run_job_now
from utils.ml.model_trainer import ModelTrainer
from utils.time import utcnow

METRIC = "dolum_sure"


def _two_versions(app) -> tuple[int, int]:
    with app.app_context():
        now = utcnow()
        small_hotel(end=now - timedelta(days=1), days=29)
        [first] = ModelTrainer(db, actor="test").train(METRIC)
        small_hotel(seed=8, end=now, days=1)
        [second] = ModelTrainer(db, actor="test", promote="always").train(METRIC)
        run_job_now("drift_check", "test", trigger="api")
        db.session.remove()
    return first["model_id"], second["model_id"]


def test_a_rollback_from_the_dashboard_pins_and_unpin_removes_it(app, client):
    first, second = _two_versions(app)
    csrf = sign_in(client)
    done = client.post(f"/ml/dashboard/models/{first}/activate",
                       data={"csrf_token": csrf, "reason": "v2 pages at night"})
    assert done.status_code == 302
    page = client.get("/ml/dashboard").get_data(as_text=True)
    pin = page[page.index(f'data-pin="isolation_forest/{METRIC}"'):]
    assert f"Pinned to #{first} by <strong>dashboard</strong>" in pin and "v2 pages at night" in pin
    # Without the CSRF token nothing changes.
    assert client.post(f"/ml/dashboard/pins/isolation_forest/{METRIC}/unpin").status_code == 403
    assert "data-pin=" in client.get("/ml/dashboard").get_data(as_text=True)
    gone = client.post(f"/ml/dashboard/pins/isolation_forest/{METRIC}/unpin", data={"csrf_token": csrf})
    assert gone.status_code == 302
    page = client.get("/ml/dashboard").get_data(as_text=True)
    assert "data-pin=" not in page and "unpinned: automatic promotion resumes" in page


def test_the_comparison_page_and_the_drift_chart_are_server_rendered(app, client):
    first, second = _two_versions(app)
    sign_in(client)
    page = client.get(f"/ml/dashboard/compare/isolation_forest/{METRIC}?challenger={first}&days=7")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert f"champion #{second} vs challenger #{first}" in html
    table = html[html.index('id="gate-numbers"'):html.index("</table>", html.index('id="gate-numbers"'))]
    assert table.count("<tr>") == 3 and "F1" in table
    chart = html[html.index('id="chart-histogram"'):]
    assert chart.count('<polyline class="line"') == 2 and "<svg" in chart
    assert "<script" not in html
    # The page's CSP allows no inline style either (issue 12): none is needed.
    assert " style=" not in html and "style-src 'self'" in page.headers["Content-Security-Policy"]
    assert client.get(f"/ml/dashboard/compare/isolation_forest/{METRIC}?days=x").status_code == 400
    assert client.get(f"/ml/dashboard/compare/isolation_forest/{METRIC}?challenger=999999").status_code == 404
    index = client.get("/ml/dashboard").get_data(as_text=True)
    drift = index[index.index('id="chart-drift"'):]
    assert re.search(r"<svg[^>]*>", drift) and METRIC in drift[:4000] and "<script" not in index
