"""Models of the job routes (``/scan``, ``/train``, ``/cleanup``): who starts a job, with what, and its result."""
from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Optional

from pydantic import AfterValidator, Field
from pydantic_core import PydanticCustomError

from utils.ml.pipeline.observations import INTERNAL_METRIC_TYPES
from utils.web.api.base import Actor, BodyModel, MetricType, ResponseModel, json_int


def _not_internal(value: str) -> str:
    if value in INTERNAL_METRIC_TYPES:
        raise PydanticCustomError("internal_metric_type", "{value!r} is the ML subsystem's own figure, never trained "
                                  "on or scanned", {"value": value})
    return value


# The "not" keeps the document exact: a reserved name is invalid by the schema too.
JobMetricType = Annotated[MetricType, AfterValidator(_not_internal),
                          Field(json_schema_extra={"not": {"enum": sorted(INTERNAL_METRIC_TYPES)}})]


class JobRequest(BodyModel):
    """Optional body of ``/scan`` and ``/train``: who, and optionally one metric type."""

    actor: Optional[Actor] = Field(default=None, description="who started it (recorded as api:<actor>)")
    metric_type: Optional[JobMetricType] = Field(default=None, description="only this metric type (default: all)")

    def params(self) -> dict[str, Any]:
        return {"metric_type": self.metric_type} if self.metric_type else {}


class TrainRequest(JobRequest):
    """Optional body of ``/train``: who, one metric type, and what may become active."""

    promote: Literal["auto", "never", "always"] = Field(
        default="auto", description="auto: the promotion gate decides; never: keep as challenger; "
                                    "always: activate whatever the gate says (a pinned type never changes)")

    def params(self) -> dict[str, Any]:
        params = super().params()
        if self.promote != "auto":
            params["promote"] = self.promote
        return params


KeepVersions = json_int(1, 1000)


class CleanupRequest(BodyModel):
    """Optional body of ``/cleanup``."""

    actor: Optional[Actor] = Field(default=None, description="who started it (recorded as api:<actor>)")
    keep_versions: Optional[KeepVersions] = Field(default=None,
                                                  description="versions kept per type (default: ML_KEEP_VERSIONS)")

    def params(self) -> dict[str, Any]:
        return {"keep_versions": self.keep_versions} if self.keep_versions else {}


class JobResult(ResponseModel):
    """A finished run (its row in ml_job_runs has the same id)."""

    job: str
    actor: str
    run_id: int
    trigger: str = Field(description="api for runs started here (cli, api or schedule in ml_job_runs)")
    status: str = Field(description="success (a failed run answers 500 with the reason)")
    scheduled_for: datetime
    duration_s: float
    result: Any = Field(description="what the job reported (counts, model ids...)")
