"""POST /api/ml/metrics (batch ingest, all or nothing) and POST /api/ml/detect, on both databases.

Every validation rule answers 400 naming the item index, the field and the
rule, and leaves ``ml_metrics`` untouched; nothing from a request is ever
unpickled.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from sqlalchemy import func, select

from tests.ml_helpers import booby_pickle
from utils.extensions import db
from utils.ml.pipeline.features import build_pipeline, observation_matrix
from utils.ml.model_manager import get_model_manager
from utils.models import MLMetric

TS = "2025-03-01T10:00:00Z"


def obs(**overrides) -> dict:
    item = {"metric_type": "stok_seviye", "entity_id": 7, "metric_value": 12.5, "timestamp": TS}
    item.update(overrides)
    return {k: v for k, v in item.items() if v is not ...}


def count_rows(app) -> int:
    with app.app_context():
        value = db.session.scalar(select(func.count()).select_from(MLMetric))
        db.session.remove()
        return value


def post_raw(client, headers, payload: str | bytes, content_type: str = "application/json", path="/api/ml/metrics"):
    return client.post(path, headers=headers, data=payload, content_type=content_type)


# ------------------------------------------------------------------ ingest
def test_ingest_writes_every_field(app, client, auth_headers):
    items = [obs(), obs(entity_id=None, metric_value=-3, timestamp="2025-03-01T13:00:00+03:00",
                        extra_data={"source": "app", "tags": ["a", "ü"]}),
             obs(metric_type="dolum_sure", entity_id=0, metric_value=1e300, timestamp="2025-03-01T10:00:00")]
    response = client.post("/api/ml/metrics", headers=auth_headers, json={"observations": items})
    assert response.status_code == 201, response.get_json()
    assert response.get_json() == {"inserted": 3}
    with app.app_context():
        rows = db.session.scalars(select(MLMetric).order_by(MLMetric.id)).all()
        got = [(r.metric_type, r.entity_id, r.metric_value, r.timestamp.replace(tzinfo=None).isoformat(),
                r.extra_data) for r in rows]
        db.session.remove()
    assert got == [
        ("stok_seviye", 7, 12.5, "2025-03-01T10:00:00", None),
        ("stok_seviye", None, -3.0, "2025-03-01T10:00:00", {"source": "app", "tags": ["a", "ü"]}),  # to UTC
        ("dolum_sure", 0, 1e300, "2025-03-01T10:00:00", None),  # naive = UTC
    ]


def test_ten_thousand_observations_in_one_call(app, client, auth_headers):
    items = [obs(entity_id=i % 500, metric_value=float(i)) for i in range(10_000)]
    started = time.perf_counter()
    response = client.post("/api/ml/metrics", headers=auth_headers, json={"observations": items})
    elapsed = time.perf_counter() - started
    assert response.status_code == 201, response.get_json()
    assert response.get_json() == {"inserted": 10_000}
    assert count_rows(app) == 10_000
    print(f"ingested 10,000 observations in {elapsed:.2f}s ({app.config['SQLALCHEMY_DATABASE_URI'].split(':')[0]})")
    assert elapsed < 30


def test_more_than_ten_thousand_is_refused_and_nothing_written(app, client, auth_headers):
    items = [obs(metric_value=float(i)) for i in range(10_001)]
    response = client.post("/api/ml/metrics", headers=auth_headers, json={"observations": items})
    assert response.status_code == 400
    error = response.get_json()["errors"][0]
    assert error["field"] == "observations" and "at most 10000 items" in error["rule"]
    assert count_rows(app) == 0


# (item overrides, field, rule); each case is item 2 of an otherwise valid batch.
ITEM_RULES = [
    ({"metric_type": "Stok"}, "metric_type", "must match ^[a-z][a-z0-9_]{0,49}$"),
    ({"metric_type": "stök"}, "metric_type", "must match"),
    ({"metric_type": "a" * 51}, "metric_type", "must match"),
    ({"metric_type": ""}, "metric_type", "must match"),
    ({"metric_type": "model_load_time"}, "metric_type", "reserved for the ML subsystem"),
    ({"metric_type": 5}, "metric_type", "valid string"),
    ({"metric_type": ...}, "metric_type", "Field required"),
    ({"entity_id": -1}, "entity_id", "greater than or equal to 0"),
    ({"entity_id": 2**31}, "entity_id", "less than or equal to 2147483647"),
    ({"entity_id": 10**30}, "entity_id", "less than or equal to 2147483647"),
    ({"entity_id": 1.5}, "entity_id", "must be a whole number"),
    ({"entity_id": True}, "entity_id", "must be a whole number"),
    ({"entity_id": "7"}, "entity_id", "valid integer"),
    ({"metric_value": "12"}, "metric_value", "valid number"),
    ({"metric_value": True}, "metric_value", "not a boolean"),
    ({"metric_value": None}, "metric_value", "valid number"),
    ({"metric_value": ...}, "metric_value", "Field required"),
    ({"timestamp": ...}, "timestamp", "Field required"),
    ({"timestamp": "yesterday"}, "timestamp", "valid datetime"),
    ({"timestamp": "2025-02-30T00:00:00Z"}, "timestamp", "valid datetime"),
    ({"timestamp": 1735689600}, "timestamp", "valid datetime"),
    ({"timestamp": "0001-01-01T00:00:00+05:00"}, "timestamp", "between years 1 and 9999"),
    ({"extra_data": [1, 2]}, "extra_data", "must be a JSON object"),
    ({"room": 101}, "room", "unknown field"),
]


def test_every_item_rule_names_index_field_and_rule_and_writes_nothing(app, client, auth_headers):
    for overrides, field, rule in ITEM_RULES:
        items = [obs(), obs(metric_value=1), obs(**overrides), obs(metric_value=3)]
        response = client.post("/api/ml/metrics", headers=auth_headers, json={"observations": items})
        assert response.status_code == 400, (overrides, response.get_json())
        body = response.get_json()
        assert body["errors"][0] == {"index": 2, "field": field, "rule": body["errors"][0]["rule"]}, overrides
        assert rule in body["errors"][0]["rule"], (overrides, body)
        assert body["error"].startswith(f"invalid request body: item 2, {field}: "), body["error"]
    assert count_rows(app) == 0


def test_non_finite_and_huge_numbers_are_refused(app, client, auth_headers):
    for token in ("NaN", "Infinity", "-Infinity", "1e400", "-1e999", "1" + "0" * 400):
        payload = ('{"observations": [{"metric_type": "stok_seviye", "metric_value": %s, "timestamp": "%s"}]}'
                   % (token, TS))
        response = post_raw(client, auth_headers, payload)
        assert response.status_code == 400, response.get_data(as_text=True)
        error = response.get_json()["errors"][0]
        assert (error["index"], error["field"]) == (0, "metric_value")
        # A 401-digit integer is not a JSON number a float can hold: "valid", the rest "finite".
        assert error["rule"] in ("Input should be a finite number", "Input should be a valid number")
    assert count_rows(app) == 0


def test_every_bad_item_is_reported(app, client, auth_headers):
    items = [obs(metric_value="x")] * 150 + [obs()]
    body = client.post("/api/ml/metrics", headers=auth_headers, json={"observations": items}).get_json()
    assert body["error_count"] == 150 and len(body["errors"]) == 100  # listed up to 100, all counted
    assert [e["index"] for e in body["errors"]] == list(range(100))
    assert count_rows(app) == 0


TRANSPORT_CASES = [
    ('{"observations": []}', "application/json", 400, "at least 1 item"),
    ("{}", "application/json", 400, "Field required"),
    ("[]", "application/json", 400, "should be an object"),
    ("null", "application/json", 400, "should be an object"),
    ('{"observations": {"metric_type": "x"}}', "application/json", 400, "valid array"),
    ('{"observations": [1]}', "application/json", 400, "should be an object"),
    ('{"observations": [', "application/json", 400, "malformed JSON"),
    ('{"observations": []} trailing', "application/json", 400, "malformed JSON"),
    ("", "application/json", 400, "request body is required"),
    ("   ", "application/json", 400, "request body is required"),
    ('{"observations": []}', "text/plain", 415, "Content-Type must be application/json"),
    ('{"observations": []}', "multipart/form-data; boundary=x", 415, "Content-Type must be application/json"),
    (b"\xff\xfe{\x00}", "application/json", 400, "malformed JSON"),
    (b'{"observations": "\xed\xa0\x80"}', "application/json", 400, "malformed JSON"),  # a lone surrogate
    ('{"observations": [{"metric_type": "\\u0000"}]}', "application/json", 400, "must match"),
]


def test_transport_errors(app, client, auth_headers):
    for payload, content_type, status, needle in TRANSPORT_CASES:
        response = post_raw(client, auth_headers, payload, content_type)
        assert response.status_code == status, (payload, response.get_data(as_text=True))
        assert response.is_json
        body = response.get_json()
        assert needle in body["error"] or any(needle in e["rule"] for e in body.get("errors", [])), (payload, body)
    assert count_rows(app) == 0


def test_a_body_over_the_limit_is_413(app, client, auth_headers):
    from utils.web.api import MAX_BODY_BYTES

    payload = b'{"observations": [' + b" " * (MAX_BODY_BYTES + 1) + b"]}"
    response = post_raw(client, auth_headers, payload)
    assert response.status_code == 413
    assert response.is_json and "error" in response.get_json()
    assert count_rows(app) == 0


def test_a_pickle_in_a_request_is_never_unpickled(app, client, auth_headers, tmp_path):
    marker = tmp_path / "unpickled"
    payload = booby_pickle(marker)
    for path in ("/api/ml/metrics", "/api/ml/detect", "/api/ml/models/1/activate"):
        for content_type in ("application/json", "application/octet-stream", "application/python-pickle"):
            response = post_raw(client, auth_headers, payload, content_type, path=path)
            assert response.status_code in (400, 415), (path, content_type, response.status_code)
            assert response.is_json
    assert not marker.exists()
    assert count_rows(app) == 0


# ------------------------------------------------------------------ detect
def fitted_model_id(app, metric_type: str = "stok_seviye") -> int:
    """Save a real entity-aware pipeline trained on normal stock levels around 100."""
    rng = np.random.default_rng(3)
    entities = np.repeat(np.arange(1, 11), 30)
    values = rng.normal(100, 5, size=entities.size)
    model = build_pipeline(n_estimators=50, contamination=0.01).fit(observation_matrix(entities, values))
    with app.app_context():
        model_id = get_model_manager().save_model(model, "isolation_forest", metric_type).id
        db.session.remove()
    return model_id


def test_detect_with_z_score_when_there_is_no_model(client, auth_headers):
    response = client.post("/api/ml/detect", headers=auth_headers,
                           json={"metric_type": "stok_seviye", "values": [10, 11, 9, 10, 12, 10, 11, 95]})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["method"] == "z_score" and body["model_id"] is None and body["source"] == "none"
    assert [r.split(":")[0] for r in body["fallback_reasons"]] == ["isolation_forest_file", "isolation_forest_db"]
    assert "no_active_model" in body["fallback_reasons"][0]
    assert [r["is_anomaly"] for r in body["results"]] == [False] * 7 + [True]
    assert [r["index"] for r in body["results"]] == list(range(8))
    assert body["anomaly_count"] == 1 and body["results"][7]["severity"] in ("low", "medium", "high", "critical")


def test_detect_with_the_active_model_file_then_fallback_when_it_is_corrupted(app, client, auth_headers):
    model_id = fitted_model_id(app)
    payload = {"metric_type": "stok_seviye", "observations": [
        {"entity_id": 1, "metric_value": 101.0, "timestamp": "2025-03-01T10:00:00+03:00"},
        {"entity_id": 2, "metric_value": 400.0},
    ]}
    body = client.post("/api/ml/detect", headers=auth_headers, json=payload).get_json()
    assert (body["method"], body["model_id"], body["fallback_reasons"]) == ("isolation_forest_file", model_id, [])
    assert [r["is_anomaly"] for r in body["results"]] == [False, True]
    assert [r["entity_id"] for r in body["results"]] == [1, 2]
    assert body["results"][0]["timestamp"] in ("2025-03-01T07:00:00Z", "2025-03-01T07:00:00+00:00")
    assert body["results"][1]["timestamp"] is None

    detail = client.get(f"/api/ml/models/{model_id}", headers=auth_headers).get_json()
    path = Path(detail["path"])
    path.write_bytes(path.read_bytes()[: detail["size_bytes"] // 2])  # a real torn file
    with app.app_context():
        get_model_manager().clear_cache()
    body = client.post("/api/ml/detect", headers=auth_headers, json=payload).get_json()
    assert body["method"] == "z_score"
    assert "checksum_mismatch" in body["fallback_reasons"][0]


DETECT_RULES = [
    ({"metric_type": "stok_seviye"}, "values", "Field required"),
    ({"metric_type": "stok_seviye", "values": []}, "values", "at least 1 item"),
    ({"metric_type": "stok_seviye", "values": [1, "2"]}, "values.1", "valid number"),
    ({"metric_type": "stok_seviye", "values": [1, True]}, "values.1", "valid number"),
    ({"metric_type": "stok_seviye", "values": [1, None]}, "values.1", "valid number"),
    ({"metric_type": "stok_seviye", "values": [1], "observations": []}, "values", "unknown field"),
    ({"metric_type": "Bad", "values": [1]}, "metric_type", "must match"),
    ({"values": [1]}, "metric_type", "Field required"),
    ({"metric_type": "stok_seviye", "values": [1.0] * 10_001}, "values", "at most 10000 items"),
    ({"metric_type": "stok_seviye", "observations": [{"metric_value": 1, "entity_id": -1}]},
     "observations.0.entity_id", "greater than or equal to 0"),
    ({"metric_type": "stok_seviye", "observations": [{"entity_id": 1}]}, "observations.0.metric_value",
     "Field required"),
    ({"metric_type": "stok_seviye", "observations": [{"metric_value": 1, "timestamp": "x"}]},
     "observations.0.timestamp", "valid datetime"),
    ({"metric_type": "stok_seviye", "observations": [{"metric_value": 1, "timestamp": "9999-12-31T23:00:00-05:00"}]},
     "observations.0.timestamp", "between years 1 and 9999"),
    ({"metric_type": "stok_seviye", "observations": [{"metric_value": 1, "colour": "red"}]},
     "observations.0.colour", "unknown field"),
    ([1, 2], "body", "should be an object"),
]


def test_detect_rules(client, auth_headers):
    for payload, field, rule in DETECT_RULES:
        response = client.post("/api/ml/detect", headers=auth_headers, json=payload)
        assert response.status_code == 400, (payload, response.get_json())
        errors = response.get_json()["errors"]
        assert any(e["field"] == field and rule in e["rule"] for e in errors), (payload, errors)


def test_detect_refuses_non_finite_numbers(client, auth_headers):
    for token in ("NaN", "Infinity", "1e999"):
        response = post_raw(client, auth_headers, '{"metric_type": "stok_seviye", "values": [1, %s]}' % token,
                            path="/api/ml/detect")
        assert response.status_code == 400
        assert response.get_json()["errors"][0] == {"field": "values.1", "rule": "Input should be a finite number"}


def test_detect_extreme_but_finite_values_answer_without_500(client, auth_headers):
    for values in ([1.7e308, -1.7e308, 0.0], [5e-324] * 3, [0.0], [3.0] * 20 + [3.0000001]):
        response = client.post("/api/ml/detect", headers=auth_headers,
                               json={"metric_type": "dolum_sure", "values": values})
        assert response.status_code == 200, (values, response.get_data(as_text=True))
        body = response.get_json()
        assert len(body["results"]) == len(values)
        json.dumps(body, allow_nan=False)  # valid JSON: no bare NaN/Infinity in the output


def test_detect_writes_nothing(app, client, auth_headers):
    client.post("/api/ml/detect", headers=auth_headers, json={"metric_type": "stok_seviye", "values": [1, 2, 99]})
    assert count_rows(app) == 0


def test_a_utf8_byte_order_mark_is_ignored(client, auth_headers):
    payload = "\ufeff" + json.dumps({"metric_type": "stok_seviye", "values": [1, 2, 3]})
    response = post_raw(client, auth_headers, payload.encode("utf-8"), path="/api/ml/detect")
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["results"]) == 3
