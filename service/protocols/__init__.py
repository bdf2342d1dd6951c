"""One codec per protocol: body bytes → `InferenceRequest`, `InferenceResult` → answer; no HTTP in them."""

from __future__ import annotations

from service.explain import Explainer
from service.features import Preprocess
from service.protocols.base import Codec
from service.protocols.mlflow import MlflowCodec
from service.protocols.native import NativeCodec
from service.protocols.v2 import V2Codec

# protocol name → the Content-Types its codec decodes (None: any); HTTP checks them before reading a body
MEDIA_TYPES: dict[str, tuple[bytes, ...] | None] = {
    "native": NativeCodec.media_types,
    "v2": V2Codec.media_types,
    "mlflow": MlflowCodec.media_types,
}


def codecs_for(pre: Preprocess, max_records: int, explainer: Explainer | None = None) -> dict[str, Codec]:
    """Every protocol's codec for one model, by protocol name."""
    native = NativeCodec(pre, max_records, explainer)
    return {"native": native, "v2": V2Codec(pre, max_records, explainer), "mlflow": MlflowCodec(native)}
