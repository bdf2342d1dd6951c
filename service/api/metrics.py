"""Prometheus exposition."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.deps import TelemetryDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(telemetry: TelemetryDep) -> Response:
    """Prometheus metrics: requests, batches, queues, models and input warnings."""
    return Response(telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)
