"""The one way a request is scored, whatever its protocol: find the model, infer, hand back a Result.

Every scoring route goes read → decode (the protocol's codec) → `DataPlane.infer` → encode; what
each prediction should also pass through (a log, a shadow model) belongs here, once.
"""

from __future__ import annotations

from service.protocols.base import Request, Result
from service.store import LoadedModel, ModelStore


class DataPlane:
    """Model lookup and inference for every front door (after MLServer's DataPlane)."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store

    def model(self, name: str | None) -> LoadedModel:
        """The serving version of a model (None: the default); raises ModelNotFound."""
        return self.store.get(name)

    async def model_version(self, name: str | None, version: int | None) -> LoadedModel:
        """A given version (an older one is loaded on demand); raises ModelNotFound."""
        return await self.store.get_version(name, version)

    async def infer(self, model: LoadedModel, request: Request, timeout: float | None = None) -> Result:
        """The model's outputs for a decoded request, through its batcher."""
        out = await model.infer(request.enc, timeout)
        return Result(model.name, model.version, out, request)
