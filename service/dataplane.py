"""The one way a request is scored, whatever its protocol (after MLServer's DataPlane): what every
prediction should also pass through (a log, a shadow model) goes here, once."""

from __future__ import annotations

from typing import Any

import numpy as np

from monitoring.log import Note, PredictionLog
from service.errors import InputError
from service.protocols.base import InferenceRequest, InferenceResult
from service.store import LoadedModel, ModelStore, NoExplainer


class DataPlane:
    """Model lookup and inference for every scoring route."""

    def __init__(self, store: ModelStore, log: PredictionLog | None = None) -> None:
        self.store, self.log = store, log
        if log is not None:  # plain requests reach the log a batch at a time, once answered
            store.observer = self._log_batch

    def model(self, name: str | None) -> LoadedModel:
        """The serving version (name None: the default model); raises ModelNotFound."""
        return self.store.get(name)

    async def model_version(self, name: str | None, version: int | None) -> LoadedModel:
        """A given version; raises ModelNotFound."""
        return await self.store.get_version(name, version)

    async def infer(
        self, model: LoadedModel, request: InferenceRequest, timeout: float | None = None
    ) -> InferenceResult:
        """The model's outputs for a request, through its batcher (with each feature's effect when
        the request asks for reasons: a batcher of their own, so other requests pay nothing)."""
        if request.explain is not None:
            result = await self._explained(model, request, timeout)
            if self.log is not None:  # logged once its reasons are checked
                self.log.add(model.name, model.version, model.pre, request.enc.num, request.enc.cat, result.out,
                             *self._note(request))  # fmt: skip
            return result
        note = self._note(request) if self.log is not None else None
        return InferenceResult(model.name, model.version, await model.infer(request.enc, timeout, note), request)

    @staticmethod
    def _note(request: InferenceRequest) -> Note:
        """What the log keeps of a request beside its rows: ids, levels as sent, request id."""
        request_id = request.request_id or (request.id if type(request.id) is str else None)
        return request.ids, request.levels, request_id

    def _log_batch(
        self, model: LoadedModel, num: np.ndarray, cat: np.ndarray, out: np.ndarray, notes: list[tuple[int, Any]]
    ) -> None:
        assert self.log is not None
        self.log.add_batch(model.name, model.version, model.pre, num, cat, out, notes)

    @staticmethod
    async def _explained(model: LoadedModel, request: InferenceRequest, timeout: float | None) -> InferenceResult:
        try:
            out, effects = await model.explain(request.enc, timeout)
        except NoExplainer as exc:
            raise InputError("invalid", str(exc)) from None
        if not np.isfinite(effects.effects).all():  # never a silently wrong reason
            row = int(np.argwhere(~np.isfinite(effects.effects))[0, 0])
            raise InputError("invalid", f"record {row} could not be explained: its values are too far from training")
        return InferenceResult(model.name, model.version, out, request, effects)
