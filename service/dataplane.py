"""The one way a request is scored, whatever its protocol (after MLServer's DataPlane): what every
prediction should also pass through (a log, a shadow model) goes here, once."""

from __future__ import annotations

from service.protocols.base import InferenceRequest, InferenceResult
from service.store import LoadedModel, ModelStore


class DataPlane:
    """Model lookup and inference for every scoring route."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def model(self, name: str | None) -> LoadedModel:
        """The serving version (name None: the default model); raises ModelNotFound."""
        return self.store.get(name)

    async def model_version(self, name: str | None, version: int | None) -> LoadedModel:
        """A given version; raises ModelNotFound."""
        return await self.store.get_version(name, version)

    async def infer(
        self, model: LoadedModel, request: InferenceRequest, timeout: float | None = None
    ) -> InferenceResult:
        """The model's outputs for a request, through its batcher."""
        out = await model.infer(request.enc, timeout)
        return InferenceResult(model.name, model.version, out, request)
