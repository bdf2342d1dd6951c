"""One codec per protocol: body bytes → `Request`, `Result` → answer; no HTTP in them."""

from __future__ import annotations

from service.features import Preprocess
from service.protocols.base import Codec
from service.protocols.mlflow import MlflowCodec
from service.protocols.native import NativeCodec
from service.protocols.v2 import V2Codec


def codecs_for(pre: Preprocess, max_records: int) -> dict[str, Codec]:
    """Every protocol's codec for one model, by protocol name."""
    native = NativeCodec(pre, max_records)
    return {"native": native, "v2": V2Codec(pre, max_records), "mlflow": MlflowCodec(native)}
