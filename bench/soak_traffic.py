"""The soak's clients: mixed traffic from a few threads, every outcome recorded.

Each client thread loops over weighted actions (ingest, detect, alert and model
lists, health/ready/metrics scrapes, the signed-in dashboard page) with a
short think time.  Ingested observations carry ``extra_data.soak_key``: a key
unique to this run, so the end of the soak can check that every observation
answered 201 is in the database with its value.  Nothing here talks to the
database; only HTTP on the loopback address.
"""
from __future__ import annotations

import random
import re
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Optional

import requests

# (action, weight): a mix like a hotel app plus a Prometheus and a monitor.
ACTIONS = (
    ("ingest", 30), ("detect", 15), ("alerts", 10), ("models", 10), ("health", 10),
    ("ready", 5), ("metrics", 5), ("dashboard", 5),
)
INGEST_BATCH = 5
ANOMALY_SHARE = 0.05  # some ingested values are far off, so scans raise alerts meanwhile
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass(frozen=True)
class Outcome:
    """One request: when (seconds since the soak started), what, and how it ended."""

    at: float
    action: str
    status: str  # the HTTP status as text, or "timeout" / "connection_error"
    seconds: float


@dataclass
class Recorder:
    """Thread-safe store of outcomes and of the observations the server accepted."""

    started: float = field(default_factory=time.monotonic)
    outcomes: list[Outcome] = field(default_factory=list)
    accepted: dict[str, float] = field(default_factory=dict)  # soak_key -> metric_value (201 answers)
    unanswered: dict[str, float] = field(default_factory=dict)  # sent, but no 201 (may or may not be stored)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started

    def add(self, outcome: Outcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def ingested(self, values: dict[str, float], accepted: bool) -> None:
        with self._lock:
            (self.accepted if accepted else self.unanswered).update(values)

    def snapshot(self) -> list[Outcome]:
        with self._lock:
            return list(self.outcomes)


@dataclass(frozen=True)
class Target:
    """Where the clients send traffic and what the demo data looks like."""

    base: str
    token: str
    run_id: str
    products: int
    rooms: list[int]
    attendants: int
    timeout: float = 30.0


def _observation(target: Target, rng: random.Random, key: str) -> dict[str, Any]:
    kind = rng.choice(("stok_seviye", "tuketim_miktar", "dolum_sure"))
    if kind == "stok_seviye":
        entity, value = rng.randint(1, target.products), float(rng.randint(50, 150))
    elif kind == "tuketim_miktar":
        entity, value = rng.choice(target.rooms), float(rng.randint(1, 8))
    else:
        entity, value = rng.randint(1, target.attendants), round(rng.uniform(15, 40), 1)
    if rng.random() < ANOMALY_SHARE:
        value = round(value * 12 + 50, 1)
    return {"metric_type": kind, "entity_id": entity, "metric_value": value,
            "timestamp": datetime.now(timezone.utc).isoformat(),
            "extra_data": {"soak_run": target.run_id, "soak_key": key}}


class Client:
    """One client thread's session and counters."""

    def __init__(self, number: int, target: Target, recorder: Recorder, think: float, seed: int,
                 mix: tuple[tuple[str, int], ...] = ACTIONS) -> None:
        self.number = number
        self.mix = mix
        self.target = target
        self.recorder = recorder
        self.think = think
        self.rng = random.Random(seed)
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Bearer {target.token}"
        self.browser = requests.Session()  # the dashboard's cookie session, no bearer token
        self.sequence = 0
        self.signed_in = False

    def _request(self, action: str, method: str, path: str, session: Optional[requests.Session] = None,
                 timeout_s: Optional[float] = None, **kwargs: Any) -> Optional[requests.Response]:
        session = session or self.http
        at = self.recorder.now()
        started = time.monotonic()
        try:
            response = session.request(method, self.target.base + path, timeout=timeout_s or self.target.timeout,
                                       allow_redirects=False, **kwargs)
            status: str = str(response.status_code)
        except requests.Timeout:
            response, status = None, "timeout"
        except requests.RequestException:
            response, status = None, "connection_error"
        self.recorder.add(Outcome(at, action, status, time.monotonic() - started))
        return response

    def ingest(self) -> None:
        batch, values = [], {}
        for _ in range(INGEST_BATCH):
            self.sequence += 1
            key = f"{self.target.run_id}-c{self.number}-{self.sequence}"
            item = _observation(self.target, self.rng, key)
            batch.append(item)
            values[key] = item["metric_value"]
        response = self._request("ingest", "POST", "/api/ml/metrics", json={"observations": batch})
        self.recorder.ingested(values, accepted=response is not None and response.status_code == 201)

    def detect(self) -> None:
        kind = self.rng.choice(("stok_seviye", "tuketim_miktar", "dolum_sure"))
        values = [round(self.rng.uniform(1, 100), 1) for _ in range(self.rng.randint(1, 20))]
        self._request("detect", "POST", "/api/ml/detect", json={"metric_type": kind, "values": values})

    def sign_in(self) -> None:
        page = self._request("dashboard_login", "GET", "/ml/dashboard/login", session=self.browser)
        match = CSRF_RE.search(page.text) if page is not None and page.status_code == 200 else None
        if match is None:
            return
        response = self._request("dashboard_login", "POST", "/ml/dashboard/login", session=self.browser,
                                 data={"token": self.target.token, "csrf_token": match.group(1)})
        self.signed_in = response is not None and response.status_code == 302

    def dashboard(self) -> None:
        if not self.signed_in:
            self.sign_in()
            if not self.signed_in:
                return
        response = self._request("dashboard", "GET", "/ml/dashboard/", session=self.browser)
        if response is not None and response.status_code == 302:  # sent back to the sign-in page
            self.signed_in = False

    def step(self) -> None:
        action = self.rng.choices([a for a, _ in self.mix], weights=[w for _, w in self.mix])[0]
        simple: dict[str, Callable[[], Any]] = {
            "alerts": lambda: self._request("alerts", "GET", "/api/ml/alerts?per_page=20"),
            "models": lambda: self._request("models", "GET", "/api/ml/models"),
            "health": lambda: self._request("health", "GET", "/health", session=self.browser),
            "ready": lambda: self._request("ready", "GET", "/ready", session=self.browser),
            "metrics": lambda: self._request("metrics", "GET", "/metrics", session=self.browser),
        }
        if action in simple:
            simple[action]()
        else:
            getattr(self, action)()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.step()
            except Exception as exc:  # a client bug must not end the soak silently
                self.recorder.add(Outcome(self.recorder.now(), "client_error", exc.__class__.__name__, 0.0))
            stop.wait(self.think)


class Prober(Client):
    """A liveness/readiness prober beside the clients, as an orchestrator runs one: ``/health`` and
    ``/ready`` once a second with a 5 s timeout, whatever the clients are stuck in."""

    PROBE_TIMEOUT = 5.0

    def step(self) -> None:
        self._request("probe_health", "GET", "/health", session=self.browser, timeout_s=self.PROBE_TIMEOUT)
        self._request("probe_ready", "GET", "/ready", session=self.browser, timeout_s=self.PROBE_TIMEOUT)


def parse_mix(text: str) -> tuple[tuple[str, int], ...]:
    """``"ingest=30,dashboard=50"``: weights for some actions, the others keep theirs (0 drops one)."""
    weights = dict(ACTIONS)
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, raw = part.partition("=")
        if name not in weights or not raw.isdigit():
            raise ValueError(f"--mix: {part!r}: expected action=weight with action one of {', '.join(weights)}")
        weights[name] = int(raw)
    if not any(weights.values()):
        raise ValueError("--mix: at least one action needs a weight above 0")
    return tuple((name, weight) for name, weight in weights.items() if weight > 0)


def start_clients(count: int, target: Target, recorder: Recorder, think: float, stop: threading.Event,
                  mix: tuple[tuple[str, int], ...] = ACTIONS) -> list[threading.Thread]:
    threads = []
    for number in range(count):
        client = Client(number, target, recorder, think, seed=number + 1, mix=mix)
        thread = threading.Thread(target=client.run, args=(stop,), name=f"soak-client-{number}", daemon=True)
        thread.start()
        threads.append(thread)
    prober = Prober(count, target, recorder, think=1.0, seed=0)
    threads.append(threading.Thread(target=prober.run, args=(stop,), name="soak-prober", daemon=True))
    threads[-1].start()
    return threads


def summarise(outcomes: list[Outcome], phases: dict[str, tuple[float, float]]) -> dict[str, Any]:
    """Counts by phase, action and status, plus the slowest answer per action and phase."""
    table: dict[str, dict[str, Counter]] = defaultdict(lambda: defaultdict(Counter))
    slowest: dict[str, dict[str, float]] = defaultdict(dict)
    for outcome in outcomes:
        phase = next((name for name, (lo, hi) in phases.items() if lo <= outcome.at < hi), "after_end")
        table[phase][outcome.action][outcome.status] += 1
        previous = slowest[phase].get(outcome.action, 0.0)
        slowest[phase][outcome.action] = round(max(previous, outcome.seconds), 3)
    return {
        "by_phase": {phase: {action: dict(counts) for action, counts in actions.items()}
                     for phase, actions in table.items()},
        "slowest_seconds": {phase: dict(values) for phase, values in slowest.items()},
    }
