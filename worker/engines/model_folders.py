"""What a model folder may do when funasr builds a model from it: be read as data.

funasr merges a folder's ``config.yaml`` (or a hub model's ``configuration.json``) into
the arguments it is given, and when the merged ``trust_remote_code`` is true it pip-installs
the folder's ``requirements.txt`` and imports its ``remote_code`` Python file.  Arguments
win over the folder's file, so every model tingji builds through funasr gets
``trust_remote_code=False``: a folder copied from elsewhere, or a hub id typed into
``TINGJI_*_MODEL``, cannot run code in the worker.  The checkpoints are read by
``torch.load``, whose default since torch 2.6 loads tensors only; the ONNX engine reads
``config.yaml`` with ``yaml.safe_load`` and imports nothing.
"""

from __future__ import annotations

from typing import Any

SAFE_TORCH = (2, 6)  # torch.load's weights_only default: tensors, never pickled code


def torch_loads_tensors_only(version: str) -> bool:
    """Whether this torch version's ``torch.load`` (which funasr calls without
    ``weights_only``) refuses pickled objects by default."""
    parts = []
    for piece in version.split("+", 1)[0].split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts) >= SAFE_TORCH


FUNASR_BUILD_KW: dict[str, Any] = {
    "trust_remote_code": False,
    "disable_update": True,  # no hub request to check for a newer funasr
    "disable_pbar": True,
    "log_level": "ERROR",
}
