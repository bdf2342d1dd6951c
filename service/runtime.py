"""ONNX Runtime sessions: CUDA where it can really run, else CPU."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path
from typing import Literal

import onnxruntime as ort

log = logging.getLogger("tabserve.runtime")

Device = Literal["auto", "cuda", "cpu"]
CUDA_EP, CPU_EP = "CUDAExecutionProvider", "CPUExecutionProvider"
CPU: Device = "cpu"
# full float32 on the GPU: TF32 matrix products (ORT's default on Ampere and later) round their inputs
# to 10 bits, and the answers left the exported model's checked tolerance (BENCHMARKS.md)
CUDA_OPTIONS = {"use_tf32": "0"}
_preloaded = False


class ProviderError(RuntimeError):
    """The requested device cannot be used."""


def _preload_cuda_dlls() -> None:
    global _preloaded
    if not _preloaded and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as exc:  # noqa: BLE001 - a failed preload just means no CUDA
            log.debug("onnxruntime.preload_dlls failed: %s", exc)
    _preloaded = True


def cuda_devices() -> int:
    """CUDA devices the driver reports (0: no driver or no GPU)."""
    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if libcuda.cuInit(0) != 0 or libcuda.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def providers_for(device: Device, available: list[str] | None = None, gpus: int | None = None) -> list[str]:
    """Providers to ask for, CPU last; CUDA only with a GPU, or ORT logs an error per session."""
    if device == "cpu":
        return [CPU_EP]
    available = ort.get_available_providers() if available is None else available
    if CUDA_EP not in available:
        if device == "cuda":
            raise ProviderError("device=cuda but this onnxruntime build has no CUDAExecutionProvider")
        return [CPU_EP]
    gpus = cuda_devices() if gpus is None else gpus
    if gpus == 0:
        if device == "cuda":
            raise ProviderError("device=cuda but no CUDA device is visible (no driver or no GPU)")
        return [CPU_EP]
    return [CUDA_EP, CPU_EP]


def session_options(threads: int = 1) -> ort.SessionOptions:
    """`threads` intra-op threads (0: ORT's choice, one per physical core, pinned to them), whose
    pool sleeps between calls: spin-waiting starves the event loop and anything sharing the CPUs."""
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1  # sequential execution: the inter-op pool would only wait
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # BENCHMARKS.md: CPU budget
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def create_session(path: Path | str, device: Device = "auto", threads: int = 1) -> ort.InferenceSession:
    """A session on the best allowed provider (`cuda`: no CPU fallback)."""
    wanted = providers_for(device)
    if CUDA_EP in wanted:
        _preload_cuda_dlls()
    providers = [(p, CUDA_OPTIONS) if p == CUDA_EP else p for p in wanted]
    session = ort.InferenceSession(str(path), sess_options=session_options(threads), providers=providers)
    active = active_provider(session)
    if device == "cuda" and active != CUDA_EP:
        raise ProviderError(f"device=cuda but the session runs on {active}: the CUDA EP cannot start")
    if CUDA_EP in wanted and active != CUDA_EP:
        log.warning("CUDA execution provider failed to start; %s runs on %s", Path(path).parent, active)
    return session


def describe_device(device: Device) -> str:
    """Which provider `device` resolves to here, and why (a log line)."""
    try:
        wanted = providers_for(device)
    except ProviderError as exc:
        return str(exc)
    if wanted[0] == CUDA_EP:
        return f"device={device}: CUDAExecutionProvider ({cuda_devices()} GPU(s)), CPU fallback"
    if device == "cpu":
        return "device=cpu: CPUExecutionProvider"
    return "device=auto: no usable CUDA device or provider found; serving on CPUExecutionProvider"


def active_provider(session: ort.InferenceSession) -> str:
    # read back, never assumed: the CUDA provider can fail to start
    return str(session.get_providers()[0])
