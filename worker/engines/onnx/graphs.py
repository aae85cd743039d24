"""Where the ONNX engine's graphs are and how they are opened: a model folder holding
``model.onnx`` (the hub's ``-onnx`` models) or the folder ``tingji models export-onnx``
wrote (``worker.engines.onnx.export``), its ``config.yaml``, ONNX Runtime sessions.  Light to
import (``tingji doctor`` and the CLI use it); ``worker.engines.onnx.engine`` runs the graphs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.engines.onnx.export import MANIFEST, export_folder

EXPORT_HINT = "tingji models export-onnx --quantize"
# the models the engine runs as graphs (and ``export-onnx`` exports), by role as
# ``tingji.cli.doctor.model_roles`` names them
GRAPH_ROLES = ("ASR", "VAD", "punctuation")


class GraphsMissing(LookupError):
    """No ONNX graphs for a model: the message says how to make them."""


def find_graphs(source: str, data_dir: Path | None, role: str, setting: str) -> Path:
    """The folder with a model's ONNX graphs: the model folder itself when it holds
    ``model.onnx``, else the folder ``tingji models export-onnx`` wrote for it under
    ``data_dir``."""
    folder = Path(source).expanduser()
    if folder.is_dir() and (folder / "model.onnx").is_file():
        return folder
    exported = export_folder(data_dir, source) if data_dir is not None else None
    if exported and (exported / MANIFEST).is_file() and (exported / "model.onnx").is_file():
        return exported
    raise GraphsMissing(f"no ONNX graphs for the {role} model {source} ({setting}): "
                        f"run `{EXPORT_HINT}` once (it needs torch), or set "
                        "TINGJI_ENGINE=torch")


def graph_file(folder: Path, int8: bool) -> Path:
    """``model_quant.onnx`` when int8 is asked for and exported, else ``model.onnx``."""
    quant = folder / "model_quant.onnx"
    return quant if int8 and quant.is_file() else folder / "model.onnx"


def session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])



def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's ``config.yaml`` (funasr's: model_conf, frontend_conf, ...)."""
    import yaml

    path = folder / "config.yaml"
    if not path.is_file():
        raise GraphsMissing(f"{folder} has no config.yaml beside its graphs: run "
                            f"`{EXPORT_HINT} --force`")
    conf = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return conf if isinstance(conf, dict) else {}


__all__ = ["EXPORT_HINT", "GRAPH_ROLES", "GraphsMissing", "find_graphs", "graph_file",
           "read_config", "session"]
