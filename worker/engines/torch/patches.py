"""Every change tingji makes to funasr (and to torch, for funasr's exporter) at run
time, in one place: what each one is, why, and how it is undone.  Upgrading funasr is
this file read against the new version: ``apply`` says once, in the log, when the
installed funasr is not one these changes were written and tested against
(``FUNASR_TESTED``).  Nothing in site-packages is edited.

1. **Registered classes.**  ``TingjiCifPredictorV2``/``V3`` (``paraformer``) and
   ``TingjiFsmnVAD`` (``fsmnvad``) in funasr's tables, under tingji's own names, so a
   model's ``config.yaml`` may name them.
2. **A module attribute.**  ``funasr.utils.timestamp_tools.cif_wo_hidden`` is bound to a
   dispatcher: the compiled loop on a thread inside ``paraformer.decode_scope``,
   funasr's own loop on every other thread.
3. **Loaded objects** (``patch_model``): the ASR model's predictor and the VAD model
   switch, in place, to the subclasses above (padding-invariant decoding, compiled
   loops; no new parameters, the weights are the model's own).
4. **AutoModel internals the worker relies on.**  ``add_speaker_model``: funasr resets
   every ``*_kwargs`` to a snapshot taken at construction before each call, so a speaker
   model loaded later must be in the snapshot.  ``intercepting``: ``AutoModel.inference``
   answered by ``worker.batching`` for the length of one ``generate`` call, which is
   how one file's VAD and ASR calls are recorded and replayed across tasks.
5. **torch's exporter** (``torchscript_exporter``): ``torch.onnx.export`` defaults to
   the TorchScript exporter for the length of an export; funasr passes
   ``dynamic_axes``, which the dynamo exporter (torch 2.9's default) fails to convert.

``tests/unit/test_patches.py`` applies every change and removes it again.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterator
from importlib import metadata
from typing import Any

log = logging.getLogger("tingji.worker.asr")

FUNASR_TESTED = ("1.4.16",)
_REGISTERED = (("predictor_classes", "TingjiCifPredictorV2"),
               ("predictor_classes", "TingjiCifPredictorV3"),
               ("model_classes", "TingjiFsmnVAD"))
_state = {"version_checked": False}


def funasr_version() -> str | None:
    try:
        return metadata.version("funasr")
    except metadata.PackageNotFoundError:
        return None


def _classes() -> dict[str, type]:
    from worker.engines.torch.fsmnvad import TingjiFsmnVAD
    from worker.engines.torch.paraformer import TingjiCifPredictorV2, TingjiCifPredictorV3

    return {c.__name__: c for c in (TingjiCifPredictorV2, TingjiCifPredictorV3, TingjiFsmnVAD)}


def apply() -> None:
    """Changes 1 and 2 (idempotent).  The worker applies them before it builds a model."""
    from funasr.register import tables

    from worker.engines.torch.paraformer import install_cif_dispatcher

    version = funasr_version()
    if version not in FUNASR_TESTED and not _state["version_checked"]:
        log.warning("funasr %s is installed; tingji's changes to it (%s) were written and "
                    "tested for %s: check them against it", version, __name__,
                    ", ".join(FUNASR_TESTED))
    _state["version_checked"] = True
    classes = _classes()
    for table, name in _REGISTERED:
        getattr(tables, table)[name] = classes[name]
    install_cif_dispatcher()


def remove() -> None:
    """Undo changes 1 and 2 (for tests; a worker keeps them for its life)."""
    from funasr.register import tables

    from worker.engines.torch.paraformer import remove_cif_dispatcher

    for table, name in _REGISTERED:
        getattr(tables, table).pop(name, None)
    remove_cif_dispatcher()


def patch_model(model: Any) -> str:
    """Change 3 on a loaded ``AutoModel``: what its predictor and VAD now are."""
    from worker.engines.torch.fsmnvad import make_fast_vad
    from worker.engines.torch.paraformer import make_padding_invariant

    predictor = make_padding_invariant(model.model) or "stock"
    vad = make_fast_vad(getattr(model, "vad_model", None))
    return f"predictor {predictor}" + (f", VAD {vad}" if vad else "")


def unpatch_model(model: Any) -> None:
    """Undo change 3: each switched object gets its funasr class back."""
    classes = set(_classes().values())
    for obj in (getattr(model.model, "predictor", None), getattr(model, "vad_model", None)):
        if obj is not None and type(obj) in classes:
            obj.__class__ = type(obj).__bases__[0]


def add_speaker_model(model: Any, spk_kwargs: dict[str, Any]) -> None:
    """Change 4: a speaker model loaded after construction, known to the kwargs
    snapshot funasr restores before each call (``AutoModel`` only; the ONNX engine's
    stand-in keeps no snapshot)."""
    snapshot = getattr(model, "_base_kwargs_map", None)
    if isinstance(snapshot, dict):
        snapshot["spk_kwargs"] = copy.deepcopy(spk_kwargs)


@contextlib.contextmanager
def intercepting(model: Any, hook: Callable[..., Any]) -> Iterator[None]:
    """Change 4: ``model.inference`` is ``hook`` inside the block (an instance
    attribute over the class's method), the class's method again after it."""
    model.inference = hook
    try:
        yield
    finally:
        del model.inference


@contextlib.contextmanager
def torchscript_exporter() -> Iterator[None]:
    """Change 5: ``torch.onnx.export`` with ``dynamo=False`` unless the caller says
    otherwise, inside the block."""
    import torch.onnx

    stock = torch.onnx.export

    def export(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("dynamo", False)
        return stock(*args, **kwargs)
    torch.onnx.export = export  # type: ignore[assignment]
    try:
        yield
    finally:
        torch.onnx.export = stock
