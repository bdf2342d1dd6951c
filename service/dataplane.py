"""The one way a request is scored, whatever its protocol (after MLServer's DataPlane): what every
prediction should also pass through (a log, a shadow model) goes here, once."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np

from monitoring.log import Note, PredictionLog, text_of
from service.errors import InputError
from service.protocols.base import InferenceRequest, InferenceResult
from service.store import LoadedModel, ModelStore, NoExplainer


class DataPlane:
    """Model lookup and inference for every scoring route."""

    def __init__(self, store: ModelStore, log: PredictionLog | None = None) -> None:
        self.store, self.log = store, log
        store.observer = self._answered  # requests reach the log and the shadow a batch at a time

    def canary(self, model: LoadedModel, request: InferenceRequest) -> LoadedModel:
        """The version that answers a request: the champion, or its challenger for the canary share
        of the ids (the same id always the same version; a request without ids by chance)."""
        share = self.store.canary.get(model.name)
        if share is None:
            return model
        challenger = self.store.challengers.get(model.name)
        if challenger is None:
            return model
        return challenger if bucket(request) < share else model

    def model(self, name: str | None) -> LoadedModel:
        """The serving version (name None: the default model); raises ModelNotFound."""
        return self.store.get(name)

    async def model_version(self, name: str | None, version: int | str | None) -> LoadedModel:
        """A given version; raises ModelNotFound."""
        return await self.store.get_version(name, version)

    async def infer(
        self, model: LoadedModel, request: InferenceRequest, timeout: float | None = None
    ) -> InferenceResult:
        """The model's outputs for a request, through its batcher (with each feature's effect when
        the request asks for reasons: a batcher of their own, so other requests pay nothing)."""
        note = self._note(request) if self.log is not None else None
        if request.explain is not None:
            try:
                out, effects = await model.explain(request.enc, timeout, note)
            except NoExplainer as exc:
                raise InputError("invalid", str(exc)) from None
            return InferenceResult(model.name, model.version, out, request, effects)
        return InferenceResult(model.name, model.version, await model.infer(request.enc, timeout, note), request)

    @staticmethod
    def _note(request: InferenceRequest) -> Note:
        """What the log keeps of a request beside its rows: ids, levels as sent, request id."""
        request_id = request.request_id or (request.id if type(request.id) is str else None)
        return request.ids, request.levels, request_id

    def _answered(
        self, model: LoadedModel, num: np.ndarray, cat: np.ndarray, out: np.ndarray, notes: list[tuple[int, Any]]
    ) -> None:
        if self.log is not None:
            self.log.add_batch(model.name, model.version, model.pre, num, cat, out, notes)
        shadow = self.store.shadows.get(model.name)
        if shadow is not None and shadow.champion is model:
            shadow.offer(num, cat, out, notes)


def bucket(request: InferenceRequest) -> float:
    """Where a request falls in [0, 1): its first record's first id hashed (stable across processes
    and restarts), else at random."""
    for _, values in request.ids:
        text = text_of(values[0]) if values else None  # the id as the log and the shadow write it
        if text is not None:
            digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
            return int.from_bytes(digest, "big") / 2**64
    return random.random()
