"""ONNX export with a dynamic batch axis, checked against PyTorch (float64) before anything is published."""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from service.features import Preprocess
from service.runtime import CPU, create_session
from training.fuse import FusedEnsemble
from training.model import EnsembleModel

OPSET = 17
# max |ONNX Runtime − the model in float64| on probabilities (regression: × target std): above the
# fused graph's float32 rounding on large files, far below what a wiring error shows (docs/training.md)
PARITY_TOL = 5e-5
# a file whose numbers float32 resolves coarsely (years, sums in the billions) rounds beyond PARITY_TOL
# in PyTorch's own float32 pass too: the graph may differ by up to this many times that rounding
FLOAT32_SLACK = 2.0
PARITY_BATCHES = (1, 7, 4096)


class ExportError(RuntimeError):
    """The exported graph is invalid or disagrees with PyTorch; nothing is published."""


def export_onnx(scorer: EnsembleModel, pre: Preprocess, path: Path) -> FusedEnsemble:
    """Fuse the ensemble, trace with a batch of 2 (no axis specialised to 1), write model.onnx."""
    fused = FusedEnsemble(scorer.eval()).eval()
    num = torch.zeros(2, len(pre.numeric), dtype=torch.float32)
    cat = torch.zeros(2, len(pre.categorical), dtype=torch.int64)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # NOTE: the TorchScript exporter warns it is deprecated
        torch.onnx.export(
            fused,
            (num, cat),
            buf,
            input_names=["num", "cat"],
            output_names=["output"],
            dynamic_axes={"num": {0: "batch"}, "cat": {0: "batch"}, "output": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    model.doc_string = f"tabserve {pre.task} model for target {pre.target!r}"
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejected the graph: {exc}") from None
    onnx.save(model, path)
    return fused


def check_parity(scorer: EnsembleModel, path: Path, num: np.ndarray, cat: np.ndarray, tol: float) -> float:
    """ONNX Runtime vs PyTorch on the given rows and at batch 1, 7 and 4096; returns max |diff|.

    The reference is the model computed in float64: its float32 forward pass can round more than
    the fused graph does. The bound is `tol`, or FLOAT32_SLACK times that float32 pass's own
    distance from float64 where the data's numbers make it larger (a wiring error is far larger)."""
    session = create_session(path, CPU)
    exact, single = copy.deepcopy(scorer).double().eval(), scorer.eval()
    worst = rounding = 0.0
    batches = [(num, cat)] + [_tile(num, cat, n) for n in PARITY_BATCHES]
    for b_num, b_cat in batches:
        with torch.no_grad():
            expected = exact(torch.from_numpy(b_num).double(), torch.from_numpy(b_cat)).numpy()
            rounded = single(torch.from_numpy(b_num), torch.from_numpy(b_cat)).numpy()
        got = session.run(None, {"num": b_num, "cat": b_cat})[0]
        if got.shape != expected.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {expected.shape}")
        worst = max(worst, float(np.max(np.abs(got - expected))) if got.size else 0.0)
        rounding = max(rounding, float(np.max(np.abs(rounded - expected))) if got.size else 0.0)
    if not worst <= max(tol, FLOAT32_SLACK * rounding):
        raise ExportError(
            f"ONNX Runtime differs from PyTorch by {worst:.2e} (> {tol:.0e}, and > {FLOAT32_SLACK:g}× "
            f"PyTorch's own float32 rounding, {rounding:.1e})"
        )
    return worst


def _tile(num: np.ndarray, cat: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.arange(n) % len(num)
    return np.ascontiguousarray(num[idx]), np.ascontiguousarray(cat[idx])
