"""The API against its own OpenAPI document: validated by openapi-spec-validator,
then fuzzed by schemathesis (every operation, positive and negative data,
every built-in check: no 5xx, no response breaking its schema, no status or
content type the document does not declare, auth really enforced), on both
databases, through the real WSGI app.
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from tests.ml_helpers import make_model
from utils.extensions import db
from utils.ml.model_manager import get_model_manager
from utils.models import MLAlert, MLMetric
from utils.time import utcnow
from utils.web.api import schemas
from utils.web.api import OPERATIONS, api_document

OPENAPI_PATH = "/api/ml/openapi.json"
AUTH = {"Authorization": "Bearer test-admin-token-0123456789"}


def seed(app) -> None:
    """A little of everything, so that some generated ids exist and listings are not empty."""
    with app.app_context():
        manager = get_model_manager()
        for i in range(2):
            manager.save_model(make_model(i), "isolation_forest", "stok_seviye", accuracy=0.9)
        now = utcnow()
        # Fewer than ML_MIN_TRAIN_SAMPLES: a fuzzed /train checks and skips instead of fitting for seconds.
        db.session.add_all(MLMetric(metric_type="stok_seviye", entity_id=i % 3, metric_value=10.0 + i % 4,
                                    timestamp=now - timedelta(hours=i)) for i in range(20))
        db.session.add_all(MLAlert(metric_type="stok_seviye", metric_value=99.0, severity="high", method="z_score",
                                   anomaly_score=5.0, detected_at=now - timedelta(hours=i)) for i in range(3))
        db.session.commit()
        db.session.remove()


# ----------------------------------------------------------------- document
def test_document_is_valid_openapi_and_covers_every_route(client):
    response = client.get(OPENAPI_PATH, headers=AUTH)
    assert response.status_code == 200
    document = response.get_json()
    validate(document)  # raises on any violation of the OpenAPI 3.1 specification
    assert document["openapi"] == "3.1.0"
    operations = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert operations == {(op.method, op.openapi_path) for op in OPERATIONS}
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "description": "the value of ML_ADMIN_TOKEN"}
    for path, item in document["paths"].items():
        for method, entry in item.items():
            assert entry["security"] == [{"bearerAuth": []}], (method, path)
            assert {"401", "429", "503"} <= set(entry["responses"]), (method, path)
            assert "Retry-After" in entry["responses"]["429"]["headers"]
            for status, declared in entry["responses"].items():
                schema = declared["content"]["application/json"]["schema"]
                if status.startswith(("4", "5")):
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}


def test_document_schemas_are_the_validating_models(client):
    """The published request schemas are pydantic's own, byte for byte: nothing hand-written."""
    document = client.get(OPENAPI_PATH, headers=AUTH).get_json()
    components = document["components"]["schemas"]
    ref = "#/components/schemas/{model}"
    for model in (schemas.IngestRequest, schemas.ActivateRequest, schemas.JobRequest, schemas.CleanupRequest):
        generated = model.model_json_schema(ref_template=ref)
        generated.pop("$defs", None)
        assert components[model.__name__] == generated
    ingest = document["paths"]["/api/ml/metrics"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert ingest == {"$ref": "#/components/schemas/IngestRequest"}
    observation = components["ObservationIn"]
    assert observation["properties"]["metric_type"]["pattern"] == "^[a-z][a-z0-9_]{0,49}$"
    assert observation["additionalProperties"] is False
    assert components["IngestRequest"]["properties"]["observations"]["maxItems"] == 10_000
    alert_params = {p["name"]: p for p in document["paths"]["/api/ml/alerts"]["get"]["parameters"]}
    assert alert_params["per_page"]["schema"]["maximum"] == 500
    assert alert_params["method"]["schema"]["enum"] == ["isolation_forest_file", "isolation_forest_db", "z_score"]


def test_document_needs_the_token_too(client):
    assert client.get(OPENAPI_PATH).status_code == 401


def test_the_served_document_is_the_generated_one(client):
    """The fuzz run below loads the document from the code; the app serves exactly that document."""
    assert client.get(OPENAPI_PATH, headers=AUTH).get_json() == json.loads(json.dumps(api_document()))


# ----------------------------------------------------------------- fuzzing
# One pytest item per operation and database.  The schema is the API's own
# document; each case is sent to the WSGI app of the ``app`` fixture.
fuzz_schema = schemathesis.openapi.from_dict(api_document())


def _moment(value: object) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@fuzz_schema.hook
def filter_query(context, query) -> bool:
    """Drop generated queries that are not what they claim to be on the wire.

    * ``until`` before ``since`` is refused (400) by a cross-parameter rule that
      JSON Schema cannot state; test_api_alerts checks that rule.
    * A parameter whose value is an empty list is not sent at all, so an
      "unknown parameter" case with such a value arrives as a valid request.
    """
    if not isinstance(query, dict):
        return True
    if any(value == [] for value in query.values()):
        return False
    since, until = _moment(query.get("since")), _moment(query.get("until"))
    return since is None or until is None or until >= since


@pytest.fixture
def seeded_app(app):
    seed(app)
    return app


@fuzz_schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
def test_fuzz_the_whole_api(case, seeded_app):
    """No 5xx, every response matching its declared schema, status and content type."""
    # The document was loaded from the code at import; the app (and its database) is this test's.
    case.operation.schema.app = seeded_app
    case.call_and_validate(base_url="http://localhost", headers=AUTH, app=seeded_app)
