"""Signing in to the dashboard through its real form (CSRF included), for the tests that look at it."""
from __future__ import annotations

import re

TOKEN = "test-admin-token-0123456789"
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_from(response) -> str:
    match = CSRF.search(response.get_data(as_text=True))
    assert match, "the page has no CSRF field"
    return match.group(1)


def sign_in(client) -> str:
    """Sign in through the form; return the session's CSRF token."""
    token = csrf_from(client.get("/ml/dashboard/login"))
    response = client.post("/ml/dashboard/login", data={"csrf_token": token, "token": TOKEN})
    assert response.status_code == 302, response.get_data(as_text=True)
    return csrf_from(client.get("/ml/dashboard"))
