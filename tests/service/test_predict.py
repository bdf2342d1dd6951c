"""Answers from model outputs, for every task (the plain scoring code, no HTTP)."""

from __future__ import annotations

import numpy as np
import pytest

from service.api.predict import NATIVE, outcome
from service.errors import InputError
from service.features import CategoricalFeature, NumericFeature, Preprocess
from service.protocols.base import NO_ID, InferenceRequest, InferenceResult
from service.protocols.native import NativeCodec, records_of
from service.protocols.v2 import V2Codec


def _pre(task: str, labels: list[object], threshold: float | None = None) -> Preprocess:
    return Preprocess(
        task=task,  # type: ignore[arg-type]
        target="y",
        labels=labels,  # type: ignore[arg-type]
        threshold=threshold,
        id_columns=["id"],
        features=[NumericFeature("x", 0.0, 1.0, 0.0, -1.0, 1.0), CategoricalFeature("c", ("a", "b"))],
    )


def answers(pre: Preprocess, out: np.ndarray, records: list[dict[str, object]]) -> list[dict[str, object]]:
    codec = NativeCodec(pre, 1000)
    return codec.answers(InferenceResult("m", 1, out, codec.from_records(records)))


def encode(pre: Preprocess, records: list[dict[str, object]]) -> InferenceRequest:
    return NativeCodec(pre, 1000).from_records(records)


def v2_answer(
    pre: Preprocess, out: np.ndarray, outputs: list[str] | None, request_id: object, request: InferenceRequest
):
    return V2Codec(pre, 1000).encode(
        InferenceResult("m", 2, out, InferenceRequest(request.enc, [], request_id, outputs))
    )


def test_binary_uses_the_saved_threshold() -> None:
    pre = _pre("binary", ["no", "yes"], threshold=0.3)
    out = np.array([[0.8, 0.2], [0.65, 0.35], [0.1, 0.9]], dtype=np.float32)
    records = [{"id": 7, "x": 0.1}, {"x": None, "c": "a"}, {"id": "z", "c": "a"}]
    got = answers(pre, out, records)
    assert [a["label"] for a in got] == ["no", "yes", "yes"]
    assert got[0]["id"] == 7 and "id" not in got[1]


def test_multiclass_and_regression_answers() -> None:
    pre = _pre("multiclass", ["low", "mid", 3])
    out = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.0, 0.1, 0.9]], dtype=np.float32)
    records = [{"c": "a"}, {"c": "q"}, {"x": 2}]
    got = answers(pre, out, records)
    assert [a["label"] for a in got] == ["mid", "low", 3]
    assert set(got[0]["probabilities"]) == {"low", "mid", "3"}
    assert "unseen level 'q'" in got[1]["warnings"][0]
    reg = _pre("regression", [])
    rows = [{"x": 1}, {"c": "a"}]
    values = answers(reg, np.array([[1.5], [-2.0]], dtype=np.float32), rows)
    assert values == [{"value": 1.5}, {"value": -2.0}]


def test_v2_answers_for_every_task() -> None:
    binary = _pre("binary", ["no", "yes"], threshold=float(np.float32(0.35)))
    out = np.array([[0.8, 0.2], [0.65, 0.35], [0.1, 0.9]], dtype=np.float32)
    enc = encode(binary, [{"x": 0.1}, {"x": 5}, {"c": "a"}])  # the second is out of range: a warning
    answer = v2_answer(binary, out, None, "r1", enc)
    tensors = {o["name"]: o for o in answer["outputs"]}
    assert [o["name"] for o in answer["outputs"]] == ["label", "probability", "probabilities"]
    assert tensors["label"]["data"] == ["no", "yes", "yes"]  # at the threshold: positive
    assert tensors["probability"]["data"] == out[:, 1].tolist() and tensors["probability"]["shape"] == [3]
    assert tensors["probabilities"]["data"] == out.ravel().tolist() and tensors["probabilities"]["shape"] == [3, 2]
    assert answer["id"] == "r1" and answer["model_version"] == "2" and "element 1" in answer["parameters"]["warnings"]
    picked = v2_answer(binary, out, ["probability", "label"], NO_ID, enc)
    assert [o["name"] for o in picked["outputs"]] == ["probability", "label"] and "id" not in picked
    multi = _pre("multiclass", ["low", "mid", 3])
    out3 = np.array([[0.1, 0.7, 0.2], [0.0, 0.1, 0.9]], dtype=np.float32)
    tensors = {o["name"]: o for o in v2_answer(multi, out3, None, NO_ID, enc)["outputs"]}
    assert tensors["label"]["data"] == ["mid", "3"] and "probability" not in tensors
    assert tensors["probabilities"]["shape"] == [2, 3] and tensors["probabilities"]["data"] == out3.ravel().tolist()
    reg = _pre("regression", [])
    value = v2_answer(reg, np.array([[1.5], [-2.0]], dtype=np.float32), None, NO_ID, enc)
    assert value["outputs"] == [{"name": "value", "datatype": "FP32", "shape": [2], "data": [1.5, -2.0]}]


@pytest.mark.parametrize(
    ("doc", "status"),
    [({"records": []}, 422), ({"records": {}}, 422), ([], 422), ({"records": [{}] * 11}, 413)],
)
def test_request_shape_checks(doc: object, status: int) -> None:
    with pytest.raises(InputError) as info:
        records_of(doc, max_records=10)
    assert outcome(info.value, NATIVE)[0] == status


def test_a_record_with_no_feature_is_refused_naming_it() -> None:
    pre = _pre("binary", ["no", "yes"])
    with pytest.raises(InputError) as info:
        encode(pre, [{"x": 1}, {"id": 3, "X": 1}])
    assert outcome(info.value, NATIVE)[0] == 422 and info.value.details[0] == {
        "record": 1,
        "field": None,
        "message": "none of the model's 2 features is present; it has only 'X'",
    }
