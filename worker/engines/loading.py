"""Which engine runs, chosen in one place from ``TINGJI_ENGINE`` and the device, and
loaded: ``torch`` (funasr), ``onnx`` (the exported graphs), or ``auto`` (the graphs on a
CPU where they have been exported, else torch)."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

from worker.engines.base import AsrConfig, Engine, ModelLoadError

log = logging.getLogger("tingji.worker.asr")


def no_gpu_device() -> bool:
    """Linux without an NVIDIA device node (nor WSL's GPU bridge): CUDA cannot be there,
    so ``auto`` needs no torch import (about 0.3 GB resident) to know it."""
    if not sys.platform.startswith("linux"):
        return False
    dev = Path("/dev")
    return not any(dev.glob("nvidia[0-9]*")) and not (dev / "dxg").exists()


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if no_gpu_device():
        return "cpu"
    try:
        import torch
    except ImportError:  # a worker installed for the ONNX engine only
        return "cpu"

    return "cuda" if torch.cuda.is_available() else "cpu"


def onnx_graphs(config: AsrConfig, device: str) -> dict[str, Path]:
    """The graph folders by role when the ONNX engine runs ({} for torch).  With
    ``onnx`` a missing export (or ONNX Runtime) stops the worker with one line that says
    what to do; with ``auto`` (the default: ONNX on a CPU) the worker says so and runs
    torch."""
    c = config
    if c.engine == "torch" or (c.engine == "auto" and device != "cpu"):
        return {}
    from worker.engines.onnx.graphs import GraphsMissing, find_graphs

    try:
        if importlib.util.find_spec("onnxruntime") is None:
            raise GraphsMissing("the ONNX engine needs onnxruntime: pip install "
                                "'tingji[onnx]'")
        graphs = {role: find_graphs(source, c.data_dir, role, setting)
                  for role, setting, source in c.roles() if source}
    except GraphsMissing as exc:
        if c.engine == "onnx":
            raise ModelLoadError(str(exc)) from None
        log.info("engine: torch (TINGJI_ENGINE=auto runs ONNX graphs on a CPU where "
                 "they have been exported; there are none for %s)", c.model)
        log.debug("no ONNX graphs: %s", exc)
        return {}
    if c.engine == "onnx" and device != "cpu":
        log.warning("TINGJI_ENGINE=onnx runs on the CPU (device %s is not used)", device)
    return graphs


def load_engine(config: AsrConfig) -> Engine:
    """The engine ``config`` asks for, loaded (on the model lane: seconds to minutes)."""
    device = resolve_device(config.device)
    graphs = onnx_graphs(config, device)
    if graphs:
        from worker.engines.onnx.engine import OnnxEngine

        return OnnxEngine.load(config, graphs)
    from worker.engines.torch.engine import TorchEngine

    return TorchEngine.load(config, device)
