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
6. **A lean import** (``import_funasr``).  ``import funasr`` imports every one of its
   ~700 modules to fill its class tables (7-11 s on two cores, most of a worker's start);
   the worker imports the families it builds (Paraformer, SeACo, BiCif, SANM, the FSMN
   VAD, CT-Transformer, CAM++, frontends, tokenizers) and ``AutoModel``, and the tables
   import the rest, once, the first time a name is missing from them, so any model
   funasr knows still loads.  CAM++'s clustering module (scikit-learn and
   scipy.stats: 1.6 s, half of what remains) stands in as ``DEFERRED`` until a
   speaker task calls its ``ClusterBackend``, and funasr's registry finds the line of
   each class it registers by a scan of the file (``_RegistryInspect``), not by
   parsing the module again for every class.

``tests/unit/test_patches.py`` applies every change and removes it again; change 6, an
import, is checked in a fresh interpreter (``tests/test_funasr_import.py``).
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.util
import inspect
import linecache
import logging
import os
import pkgutil
import re
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger("tingji.worker.asr")

FUNASR_TESTED = ("1.4.16",)
_REGISTERED = (("predictor_classes", "TingjiCifPredictorV2"),
               ("predictor_classes", "TingjiCifPredictorV3"),
               ("model_classes", "TingjiFsmnVAD"))
_state = {"version_checked": False}
# change 6: the subpackages that hold the classes of paraformer-zh, fsmn-vad, ct-punc and
# cam++ (and of the folders tests build)
LEAN = ("funasr.models.paraformer", "funasr.models.seaco_paraformer",
        "funasr.models.bicif_paraformer", "funasr.models.sanm",
        "funasr.models.fsmn_vad_streaming", "funasr.models.ct_transformer",
        "funasr.models.campplus", "funasr.models.specaug", "funasr.frontends",
        "funasr.tokenizer")


# imported at the first call of the class, not with funasr: (module, class)
DEFERRED = ("funasr.models.campplus.cluster_backend", "ClusterBackend")


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


class _Table(dict):  # type: ignore[type-arg]
    """One of funasr's class tables: a lookup of a name it lacks imports the rest of
    funasr, once, and looks again (``in`` does not: registering a class asks it)."""

    def get(self, key: Any, default: Any = None) -> Any:
        if not dict.__contains__(self, key):
            _import_everything()
        return dict.get(self, key, default)

    def __getitem__(self, key: Any) -> Any:
        if not dict.__contains__(self, key):
            _import_everything()
        return dict.__getitem__(self, key)


def _import_all(package: str, errors: dict[str, str]) -> None:
    """Every module under ``package``, as funasr's ``__init__`` does: one that fails to
    import (an optional dependency missing) is noted and skipped."""
    module = importlib.import_module(package)
    for info in pkgutil.walk_packages(module.__path__, package + "."):
        try:
            importlib.import_module(info.name)
        except Exception as exc:  # noqa: BLE001 - funasr's own rule: skip what fails
            errors[info.name] = f"{type(exc).__name__}: {exc}"


def _import_everything() -> None:
    package = sys.modules.get("funasr")
    if package is None or getattr(package, "_tingji_complete", True):
        return
    package._tingji_complete = True
    log.info("funasr: a class outside tingji's lean import is named; importing all of "
             "funasr")
    _import_all("funasr", package._IMPORT_ERRORS)


class _RegistryInspect:
    """``inspect`` as ``funasr.register`` sees it once the lean import ran: all of it,
    but ``getsourcelines``, of which the registry keeps only the line number for its
    tables' printout, scans the class's file for its decorators and ``class``
    statement instead of parsing the whole module for each class it registers (0.8 s
    of a worker's start); where the scan finds nothing, ``inspect`` answers."""

    def __getattr__(self, name: str) -> Any:
        return getattr(inspect, name)

    @staticmethod
    def getsourcelines(obj: Any) -> tuple[list[str], int]:
        if isinstance(obj, type):
            lines = linecache.getlines(inspect.getsourcefile(obj) or "")
            statement = re.compile(rf"\s*class\s+{re.escape(obj.__name__)}\b")
            for i, line in enumerate(lines):
                if statement.match(line):
                    while i > 0 and lines[i - 1].lstrip().startswith("@"):
                        i -= 1  # inspect's line: the first decorator's
                    return lines[i:i + 1], i + 1
        return inspect.getsourcelines(obj)


def _stand_in(name: str, callable_name: str) -> ModuleType:
    """A module that stands in for ``name`` in ``sys.modules`` until something calls
    its ``callable_name`` or reads another of its names: then the real module is
    imported in its place (``from name import X`` afterwards gets the real ``X``)."""
    stand_in = ModuleType(name)

    def real() -> ModuleType:
        if sys.modules.get(name) is stand_in:
            del sys.modules[name]
        return importlib.import_module(name)

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(real(), callable_name)(*args, **kwargs)

    def attribute(name: str) -> Any:
        if name.startswith("__"):  # what tools probe every module for (inspect: __file__)
            raise AttributeError(name)
        return getattr(real(), name)

    call.__qualname__ = call.__name__ = callable_name
    setattr(stand_in, callable_name, call)
    setattr(stand_in, "__getattr__", attribute)  # noqa: B010 - PEP 562, on this module
    return stand_in


def import_funasr() -> ModuleType:
    """Change 6: the ``funasr`` package with ``AutoModel`` and the families tingji
    builds imported, where ``import funasr`` would import all of it.  Where funasr is
    already imported, that package, as it is."""
    if "funasr" in sys.modules:
        return sys.modules["funasr"]
    spec = importlib.util.find_spec("funasr")
    if spec is None or spec.origin is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'funasr'", name="funasr")
    package = importlib.util.module_from_spec(spec)  # its __init__ is not run
    errors: dict[str, str] = {}
    package.__version__ = (Path(spec.origin).parent / "version.txt").read_text().strip()
    package._IMPORT_ERRORS = errors
    package.get_import_errors = lambda: dict(errors)
    package._tingji_complete = False
    sys.modules["funasr"] = package
    sys.modules.setdefault(DEFERRED[0], _stand_in(*DEFERRED))
    try:
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # as funasr's __init__ sets it
        importlib.import_module("funasr.register").inspect = _RegistryInspect()
        from funasr.auto.auto_model import AutoModel
        from funasr.register import tables

        package.AutoModel = AutoModel
        for name in LEAN:
            _import_all(name, errors)
        for name, table in list(vars(type(tables)).items()) + list(vars(tables).items()):
            if name.endswith("_classes") and isinstance(table, dict) \
                    and not isinstance(table, _Table):
                setattr(tables, name, _Table(table))
    except BaseException:
        for name in [m for m in sys.modules if m == "funasr" or m.startswith("funasr.")]:
            del sys.modules[name]
        raise
    return package
