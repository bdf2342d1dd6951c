"""Shared route dependencies: the app's store, data plane, upload slots, settings and telemetry."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.dataplane import DataPlane
from service.scoring.upload import Uploads
from service.settings import Settings
from service.store import ModelStore
from service.telemetry import Telemetry


def get_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


def get_plane(request: Request) -> DataPlane:
    plane: DataPlane = request.app.state.plane
    return plane


def get_uploads(request: Request) -> Uploads:
    uploads: Uploads = request.app.state.uploads
    return uploads


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_telemetry(request: Request) -> Telemetry:
    telemetry: Telemetry = request.app.state.telemetry
    return telemetry


StoreDep = Annotated[ModelStore, Depends(get_store)]
PlaneDep = Annotated[DataPlane, Depends(get_plane)]
UploadsDep = Annotated[Uploads, Depends(get_uploads)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TelemetryDep = Annotated[Telemetry, Depends(get_telemetry)]
