"""The monitoring dashboard at ``/ml/dashboard``: server-rendered HTML.

Sign-in is with the admin token (``ML_ADMIN_TOKEN``, compared in constant
time by :func:`utils.web.auth.token_matches`), kept in Flask's signed session
cookie (HttpOnly, SameSite=Lax).  The session remembers a fingerprint of the
token, so rotating ``ML_ADMIN_TOKEN`` signs everybody out, and a random
session id, which sign-out revokes on the server (:mod:`utils.web.security.sessions`).
Wrong tokens count toward the per-address limit the API shares
(:mod:`utils.web.security.ratelimit`): over it, sign-in answers 429.

Every form (sign-in included) carries a CSRF token: one random value per
session, compared in constant time; a POST without the right one is refused
with 403 and changes nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any, Optional

from flask import (
    Blueprint,
    Flask,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from utils.ml.incidents import service as incident_service
from utils.ml.model_manager import get_model_manager
from utils.ml.store import catalog
from utils.web.auth import NOT_CONFIGURED, token_matches
from utils.web.dashboard import data as dashboard_data
from utils.web.dashboard import svg_charts
from utils.web.security import ratelimit, sessions

bp = Blueprint("dashboard", __name__, url_prefix="/ml/dashboard")

SESSION_ADMIN = "ml_admin"
SESSION_CSRF = "ml_csrf"
SESSION_ID = "ml_sid"
CSRF_FIELD = "csrf_token"
ACTOR = "dashboard"
MAX_REASON = 200
INCIDENTS_SHOWN = 20  # the latest incidents on the front page (the API lists them all)


def _token_fingerprint(token: str) -> str:
    """A keyed hash of the admin token: the cookie never carries the token itself."""
    key = str(current_app.secret_key or "").encode()
    return hmac.new(key, b"ml-dashboard:" + token.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def signed_in() -> bool:
    """True when this session signed in with the token that is configured now."""
    # Cached per request (its environ), not in ``g``, which can outlive a request.
    cached = request.environ.get("ml.signed_in")
    if cached is not None:
        return bool(cached)
    configured = current_app.config.get("ML_ADMIN_TOKEN")
    remembered = session.get(SESSION_ADMIN)
    session_id = session.get(SESSION_ID)
    ok = (bool(configured) and isinstance(remembered, str) and isinstance(session_id, str)
          and hmac.compare_digest(remembered, _token_fingerprint(configured))
          and not sessions.is_revoked(session_id))  # signed out elsewhere: this copy is dead too
    request.environ["ml.signed_in"] = ok
    return ok


def csrf_token() -> str:
    """This session's CSRF token, created on first use."""
    token = session.get(SESSION_CSRF)
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        session[SESSION_CSRF] = token
    return token


def csrf_ok() -> bool:
    expected = session.get(SESSION_CSRF)
    sent = request.form.get(CSRF_FIELD)
    if not isinstance(expected, str) or not sent:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "surrogatepass"), expected.encode())


def _refuse(status: int, title: str, message: str) -> tuple[str, int]:
    return render_template("dashboard/error.html", title=title, message=message), status


@bp.before_request
def _guard() -> Optional[Any]:
    """CSRF on every POST, then sign-in on everything but the sign-in page."""
    if request.method == "POST" and not csrf_ok():
        return _refuse(403, "Form expired",
                       "The form's CSRF token is missing or wrong (field csrf_token); nothing was changed. "
                       "Reload the page and try again.")
    if request.endpoint == "dashboard.login":
        return None
    if not signed_in():
        if request.method == "GET":
            return redirect(url_for("dashboard.login", next=request.path))
        return _refuse(401, "Sign-in required", "Sign in with the admin token first; nothing was changed.")
    return None


@bp.app_context_processor
def _template_helpers() -> dict[str, Any]:
    return {"csrf_token": csrf_token, "csrf_field": CSRF_FIELD}


def _safe_next(target: Optional[str]) -> str:
    """``target`` when it is a plain path inside the dashboard, else the dashboard itself.

    Never an open redirect (``//host``, ``/\\host``, ``https:``) and never a 500:
    control characters, spaces and non-ASCII (CR/LF would split the
    Location header) send the caller to the dashboard instead.
    """
    prefix = bp.url_prefix or ""
    if (target and all(0x21 <= ord(c) < 0x7f for c in target) and "//" not in target
            and "\\" not in target and (target == prefix or target.startswith((prefix + "/", prefix + "?")))):
        return target
    return url_for("dashboard.index")


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    """The sign-in form; POST checks the admin token."""
    configured = current_app.config.get("ML_ADMIN_TOKEN")
    if not configured:
        return render_template("dashboard/login.html", error=NOT_CONFIGURED, disabled=True), 503
    if request.method == "GET":
        if signed_in():
            return redirect(_safe_next(request.args.get("next")))
        return render_template("dashboard/login.html", next=request.args.get("next", ""))
    client = ratelimit.current_client()
    wait = ratelimit.retry_after(client)  # locked out: the token is not even compared
    if wait is None and not token_matches(request.form.get("token", ""), configured):
        wait = ratelimit.record_failure(client)
        if wait is None:
            return render_template("dashboard/login.html", error="Wrong admin token.",
                                   next=request.form.get("next", "")), 401
    if wait is not None:
        page = render_template("dashboard/login.html", next=request.form.get("next", ""),
                               error=f"Too many failed sign-ins from this address; try again in {wait} s.")
        return page, 429, {"Retry-After": str(wait)}
    # A fresh session on sign-in (new CSRF token and id): nothing from before carries over.
    session.clear()
    session.permanent = True
    session[SESSION_ADMIN] = _token_fingerprint(configured)
    session[SESSION_ID] = sessions.new_session_id()
    csrf_token()
    return redirect(_safe_next(request.form.get("next")))


@bp.post("/logout")
def logout() -> Response:
    """End the session here and on the server: a copy of the cookie stops working too."""
    session_id = session.get(SESSION_ID)
    if isinstance(session_id, str):
        sessions.revoke(session_id)
    session.clear()
    flash("Signed out.")
    return redirect(url_for("dashboard.login"))


@bp.get("/")
@bp.get("")
def index() -> str:
    """Everything at a glance."""
    groups = dashboard_data.model_groups()
    alerts = dashboard_data.alerts_per_day()
    latency, fallback_rate, load_totals = dashboard_data.load_history()
    charts = {
        "alerts": svg_charts.stacked_bars(alerts.categories, alerts.series, "Alerts per day per metric type",
                                          empty="No alerts in the last 14 days"),
        "latency": svg_charts.lines(latency.categories, latency.series, "Model load latency (ms)",
                                    y_label=lambda v: f"{v:.3g} ms", empty="No model loads recorded yet"),
        "fallback": svg_charts.lines(fallback_rate.categories, fallback_rate.series, "Fallback rate (%)",
                                     y_label=lambda v: f"{v:.0f}%", y_max=100.0,
                                     empty="No model loads recorded yet"),
    }
    from utils.web.dashboard.promotion import panels

    promotion = panels()
    charts["drift"] = promotion["drift_chart"]
    return render_template(
        "dashboard/index.html", groups=groups, charts=charts, load_totals=load_totals,
        store=dashboard_data.store_usage(), jobs=dashboard_data.last_job_runs(), pins=promotion["pins"],
        incidents=incident_service.list_incidents(per_page=INCIDENTS_SHOWN),
    )


@bp.post("/models/<int:model_id>/activate")
def activate(model_id: int) -> Any:
    """Make a kept version the active one (promotion or rollback), audited as ``dashboard``."""
    reason = (request.form.get("reason") or "").strip() or "activated from the dashboard"
    if len(reason) > MAX_REASON:
        return _refuse(400, "Reason too long", f"reason: at most {MAX_REASON} characters; nothing was changed.")
    try:
        # The activation the API and the CLI use: verified, audited, a no-op for the active version.
        result = catalog.activate(get_model_manager(), model_id, actor=ACTOR, reason=reason)
    except catalog.ModelNotFoundError as exc:
        return _refuse(404, "Not activated", f"{exc}; nothing was changed.")
    except catalog.ActivationRefusedError as exc:  # unreadable or mismatching file, ...: nothing changed
        return _refuse(409, "Not activated", str(exc))
    if result["changed"]:
        flash(f"Model {model_id} is now the active {result['model_type']}/{result['metric_type']} "
              f"(was {result['from_model_id'] or 'none'}).")
    else:
        flash(f"Model {model_id} already is the active {result['model_type']}/{result['metric_type']}; "
              "nothing was changed.")
    return redirect(url_for("dashboard.index") + f"#type-{result['model_type']}-{result['metric_type']}")


@bp.post("/incidents/<int:incident_id>/false-positive")
def incident_false_positive(incident_id: int) -> Any:
    """Mark an incident, and so every alert of it, a false positive (the API's operation)."""
    try:
        incident = incident_service.mark_false_positive(incident_id)
    except incident_service.IncidentNotFoundError as exc:
        return _refuse(404, "Not marked", f"{exc}; nothing was changed.")
    flash(f"Incident {incident_id} ({incident['alert_count']} alerts) marked a false positive.")
    return redirect(url_for("dashboard.index") + "#incidents")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
