"""Observation routes: ingest a batch (all or nothing) and score values or observations on demand."""
from __future__ import annotations

from typing import Any

from utils.extensions import db
from utils.ml.pipeline.observations import ObservationValidationError, ingest_observations
from utils.web.api import schemas as s
from utils.ml.validation import InvalidInput
from utils.web.api.framework import ingest_errors, operation, validation_errors


@operation("POST", "/metrics", response=s.IngestResult, body=s.IngestRequest, status=201, tag="observations",
           body_errors=ingest_errors, summary="Ingest up to 10,000 observations, all or nothing")
def ingest_metrics(body: s.IngestRequest) -> s.IngestResult:
    """Every item is validated before any is written; errors name the item index, the field and the rule."""
    items = [obs.model_dump() for obs in body.observations]
    try:
        inserted = ingest_observations(items, max_items=s.MAX_BATCH)
    except ObservationValidationError as exc:
        raise InvalidInput(exc.field, exc.rule, errors=exc.errors, message=f"invalid observations: {exc}") from None
    return s.IngestResult(inserted=inserted)


@operation("POST", "/detect", response=s.DetectResult, body=s.DetectRequest, tag="observations",
           body_errors=lambda exc: validation_errors(exc, "body", strip=s.DETECT_TAGS),
           summary="Score values or observations now, saying which method answered")
def detect(body: s.DetectRequest) -> s.DetectResult:
    """File model, else the database BLOB, else a robust Z-score; nothing is stored."""
    from utils.ml.anomaly_detector import AnomalyDetector

    request_body = body.root
    if isinstance(request_body, s.DetectValues):
        values: list[Any] = list(request_body.values)
        timestamps: list[Any] = [None] * len(values)
    else:
        # The time places each observation in its entity's history (none: now, in the given order).
        values = [{"metric_value": o.metric_value, "entity_id": o.entity_id, "timestamp": o.timestamp}
                  for o in request_body.observations]
        timestamps = [o.timestamp for o in request_body.observations]
    result = AnomalyDetector(db).detect_anomalies_with_fallback(request_body.metric_type, values).to_dict()
    db.session.rollback()
    for index, row in enumerate(result["results"]):
        row["index"] = index
        if timestamps[index] is not None:
            row["timestamp"] = timestamps[index]
    result["metric_type"] = request_body.metric_type
    return s.DetectResult.model_validate(result)
