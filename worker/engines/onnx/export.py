"""``tingji models export-onnx``: the configured models as ONNX files, made once.

funasr's own exporter (``AutoModel.export(type="onnx", quantize=...)``) writes the graphs
that FunASR's ONNX runtime (``funasr-onnx``) reads: ``model.onnx`` (and, for
SeACo-Paraformer, the hotword embedder ``model_eb.onnx``), with ``--quantize`` also
``model_quant.onnx`` (int8 weights).  tingji adds what that leaves to the user:

- torch 2.9 and later export through dynamo by default, which fails on funasr's
  ``dynamic_axes``; the export runs with the TorchScript exporter (``dynamo=False``),
  for these calls only;
- the output goes to one folder per model under ``<data>/onnx/`` (the model folders
  themselves may be read-only or shared), with the files the runtime reads beside the
  graphs (``config.yaml``, ``am.mvn``, ``tokens.json``, ...), and a ``tingji-onnx.json``
  manifest saying what was exported from what;
- every graph is checked: ONNX Runtime runs it on the exporter's own sample inputs and
  its outputs are compared with torch's on the same module (the largest difference is
  printed and recorded; an int8 graph is only checked to run);
- a model folder that already holds ``model.onnx`` (the hub's ``-onnx`` models) is used
  as it is.

torch, funasr, onnx and onnxruntime are needed here (``pip install 'tingji[onnx]'``);
the worker runs the graphs with ``TINGJI_ENGINE=onnx`` or ``auto`` (``worker.engines.onnx.engine``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worker.engines.model_folders import FUNASR_BUILD_KW

MANIFEST = "tingji-onnx.json"
# what FunASR's ONNX runtime reads beside the graphs (those present are copied)
SIDE_FILES = ("config.yaml", "configuration.json", "am.mvn", "tokens.json", "tokens.txt",
              "seg_dict", "punc.yaml", "jieba_usr_dict")
TOLERANCE = 1e-3  # fp32 ONNX against torch: largest absolute output difference
# how the int8 graphs are made (recorded in the manifest: an export made otherwise is
# made again).  funasr's exporter quantizes MatMul to unsigned 8-bit weights, which ONNX
# Runtime multiplies on a slower path than signed ones on x86, and leaves the timestamp
# head's LSTM in float, a third of the int8 graph's time.  Measured on a 2-core machine
# of this project's (another CPU than below), full-size SeACo-Paraformer, one 30 s segment: fp32
# 1.126 s, funasr's int8 1.105 s, signed MatMul weights 0.573 s; one 20 s segment on
# one thread: signed MatMul 1.316 s, and with the LSTM too 0.755 s (same logits;
# timestamps' firing weights within 2e-6).  Weights use 7 of the 8 bits
# (``reduce_range``): x86 CPUs without VNNI (AVX2 only: AMD before Zen 4, older Intel)
# add pairs of 8-bit products in 16 bits, which saturate with full-range weights; on
# such a machine (AMD EPYC, AVX2), twelve 10 s segments: character error rate against
# fp32 0.462 full range, 0.081 with 7 bits, same speed (4.26 s, 4.39 s; funasr's
# unsigned weights 0.052 at 5.07 s).  The nodes left in float are funasr's choice
# (output layers, the hotword path).
INT8 = ("dynamic, MatMul and LSTM, signed 7-bit weights per channel, output and bias nodes "
        "float")


class ExportError(RuntimeError):
    """A model that cannot be exported; the message says which and why."""


@dataclass
class Exported:
    role: str
    source: str
    folder: Path
    files: list[str] = field(default_factory=list)
    max_diff: float | None = None  # fp32 graphs against torch; None: used as found
    seconds: float = 0.0
    reused: bool = False


def _stamp(folder: Path) -> list[list[Any]] | None:
    """What says a local model folder changed since its export (its weights and config
    rewritten): name, size and mtime of each; None for a hub id."""
    if not folder.is_dir():
        return None
    return [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
            for p in sorted(folder.iterdir()) if p.name in ("model.pt", "config.yaml")]


def export_folder(data_dir: Path, source: str) -> Path:
    """Where a model's ONNX files go: ``<data>/onnx/<name>-<hash of its source>``."""
    name = Path(source.rstrip("/")).name or "model"
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:10]
    return data_dir / "onnx" / f"{name}-{digest}"


def _flat(out: Any) -> Iterator[Any]:
    """A module's outputs in the order the exporter flattens them."""
    if isinstance(out, (list, tuple)):
        for o in out:
            yield from _flat(o)
    else:
        yield out


def _inputs_of(module: Any) -> tuple[Any, ...]:
    import torch

    dummy = module.export_dummy_inputs()
    return (dummy,) if isinstance(dummy, torch.Tensor) else tuple(dummy)


def _fit_bias_width(module: Any) -> None:
    """funasr's SeACo backbone export feeds a hotword embedding 512 wide (paraformer-zh's
    width) whatever the model's own, so a narrower SeACo-Paraformer (the trained fixture
    is 192 wide) fails to export with a shape error: give the dummy the model's width."""
    width = getattr(module, "inner_dim", None)
    if not width or "bias_embed" not in module.export_input_names():
        return
    make = module.export_dummy_inputs

    def dummy() -> tuple[Any, ...]:
        import torch

        *rest, bias = make()
        return (*rest, torch.randn(*bias.shape[:-1], width))
    module.export_dummy_inputs = dummy


def _own_no_bias(module: Any) -> None:
    """funasr's SeACo export sets the "no hotword here" token to 8377, paraformer-zh's,
    whatever the model's vocabulary: in a model with another vocabulary the graph then
    takes the bias decoder's logits everywhere and decodes nothing but that token (the
    trained fixture did).  Give the graph the model's own."""
    if hasattr(module, "NOBIAS") and hasattr(module, "NO_BIAS"):
        module.NOBIAS = module.NO_BIAS


def _run(graph: Path, module: Any, inputs: tuple[Any, ...], threads: int) -> list[Any]:
    """ONNX Runtime's outputs of ``graph`` on ``inputs`` (torch tensors)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    feed = zip(module.export_input_names(), inputs, strict=False)
    return session.run(None, {name: t.numpy() for name, t in feed})  # type: ignore[no-any-return]


def _quantize(graph: Path) -> Path:
    """``model_quant.onnx`` beside ``model.onnx``: see ``INT8``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    nodes = [n.name for n in onnx.load(str(graph), load_external_data=False).graph.node]
    keep = [n for n in nodes if "output" in n or "bias_encoder" in n or "bias_decoder" in n]
    out = graph.with_name(graph.stem + "_quant.onnx")
    quantize_dynamic(model_input=str(graph), model_output=str(out),
                     op_types_to_quantize=["MatMul", "LSTM"], per_channel=True,
                     reduce_range=True,
                     weight_type=QuantType.QInt8, nodes_to_exclude=keep)
    return out


def _check(module: Any, graph: Path, threads: int) -> float:
    """The largest absolute difference between the graph's outputs and torch's outputs
    of the same module, on the exporter's sample inputs."""
    import numpy as np
    import torch

    inputs = _inputs_of(module)  # random: made once for both
    with torch.no_grad():
        want = list(_flat(module(*inputs)))
    diff = 0.0
    for w, g in zip(want, _run(graph, module, inputs, threads), strict=False):
        w = w.detach().numpy()
        if w.shape != g.shape:
            raise ExportError(f"{graph.name}: ONNX output shape {g.shape} != torch's {w.shape}")
        if w.size:
            diff = max(diff, float(np.abs(w.astype(np.float64) - g.astype(np.float64)).max()))
    return diff


def _copy_side_files(model_dir: Path, dest: Path) -> None:
    """The files the ONNX engine reads beside the graphs (config, CMVN, tokens, ...),
    copied from the model folder where the export lacks them."""
    for name in SIDE_FILES:
        if (model_dir / name).is_file() and not (dest / name).is_file():
            shutil.copy2(model_dir / name, dest / name)


def export_model(role: str, source: str, data_dir: Path, *, quantize: bool,
                 threads: int = 1, force: bool = False, setting: str = "its setting"
                 ) -> Exported:
    """Export one model (a folder or a hub id funasr resolves) and check its graphs."""
    folder = Path(source).expanduser()
    if folder.is_dir() and (folder / "model.onnx").is_file():
        files = sorted(p.name for p in folder.glob("*.onnx"))
        return Exported(role, source, folder, files, reused=True)
    dest = export_folder(data_dir, source)
    manifest = dest / MANIFEST
    stamp = _stamp(folder)
    if not force and manifest.is_file():
        done = json.loads(manifest.read_text(encoding="utf-8"))
        if (done.get("int8") == INT8 or not quantize) and done.get("stamp") == stamp:
            _copy_side_files(Path(done.get("model_dir") or folder), dest)  # newer needs
            return Exported(role, source, dest, done["files"], done.get("max_diff"),
                            reused=True)
    t = time.perf_counter()
    try:
        import onnxruntime  # noqa: F401  (checked before the long part)

        from worker.engines.torch.patches import import_funasr

        import_funasr()  # change 6
        from funasr import AutoModel
    except ImportError as exc:
        raise ExportError(f"exporting needs {exc.name}: pip install 'tingji[onnx]'") from exc
    try:
        auto = AutoModel(model=source, device="cpu", ncpu=threads, **FUNASR_BUILD_KW)
    except Exception as exc:
        from worker.errors import load_failure

        raise ExportError(f"{role} model {source}: "
                          + load_failure("it", source, setting, exc)) from exc
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    kwargs = {k: v for k, v in auto.kwargs.items() if k != "model"}
    kwargs.update(type="onnx", device="cpu")
    try:
        from funasr.utils import export_utils

        from worker.engines.torch import patches  # torch's exporter, for this export

        with patches.torchscript_exporter():
            # funasr's rebuild for export, then its exporter on each module it returns
            modules = auto.model.export(**kwargs)
            modules = list(modules) if isinstance(modules, (list, tuple)) else [modules]
            for m in modules:
                m.eval()
                _fit_bias_width(m)
                _own_no_bias(m)
                export_utils._onnx(m, quantize=False, opset_version=14,
                                   export_dir=str(tmp), device="cpu")
        if quantize:
            for graph in sorted(tmp.glob("*.onnx")):
                _quantize(graph)
        max_diff = 0.0
        for m in modules:
            name = m.export_name if isinstance(m.export_name, str) else m.export_name()
            name = name if name.endswith(".onnx") else name + ".onnx"
            max_diff = max(max_diff, _check(m, tmp / name, threads))
            if quantize:
                _run(tmp / name.replace(".onnx", "_quant.onnx"), m, _inputs_of(m),
                     threads)  # an int8 graph is only checked to run
    except ExportError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ExportError(f"{role} model {source}: the export failed: "
                          f"{type(exc).__name__}: {first}") from exc
    if max_diff > TOLERANCE:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExportError(f"{role} model {source}: the ONNX graph differs from torch by "
                          f"{max_diff:.2g} (more than {TOLERANCE}); nothing was kept")
    model_dir = Path(auto.kwargs.get("model_path") or folder)
    _copy_side_files(model_dir, tmp)
    files = sorted(p.name for p in tmp.glob("*.onnx"))
    import funasr
    import torch

    tmp.joinpath(MANIFEST).write_text(json.dumps({
        "role": role, "source": source, "model_dir": str(model_dir), "files": files,
        "quantize": quantize, "int8": INT8 if quantize else None, "max_diff": max_diff,
        "tolerance": TOLERANCE, "stamp": stamp,
        "torch": torch.__version__, "funasr": funasr.__version__,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }, indent=1), encoding="utf-8")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)  # complete or absent: a half-written export is never found
    return Exported(role, source, dest, files, max_diff, time.perf_counter() - t)


def export_models(roles: list[tuple[str, str, str | None]], data_dir: Path, *,
                  quantize: bool, force: bool = False, threads: int = 1,
                  out: Callable[[str], object] = print) -> int:
    """``tingji models export-onnx``: each (role, setting, model) exported and checked, one
    line each; exit code 0, or 1 if any failed (the others are still exported)."""
    failed = 0
    for role, setting, source in roles:
        if not source:
            continue
        try:
            # what funasr and the quantizer print goes to stderr: stdout is one line a model
            with contextlib.redirect_stdout(sys.stderr):
                done = export_model(role, source, data_dir, quantize=quantize,
                                    threads=threads, force=force, setting=setting)
        except ExportError as exc:
            out(str(exc))
            failed += 1
            continue
        what = ", ".join(done.files)
        if done.reused and done.folder == Path(source).expanduser():
            out(f"{role} model {source}: already ONNX ({what}), used as it is")
        elif done.reused:
            out(f"{role} model {source}: {done.folder} (exported before: {what}; --force "
                "exports again)")
        else:
            out(f"{role} model {source}: {done.folder} ({what}; the fp32 graph matches "
                f"torch within {done.max_diff:.1g}; {done.seconds:.0f} s)")
    return 1 if failed else 0


__all__ = ["MANIFEST", "ExportError", "Exported", "export_folder", "export_model",
           "export_models"]
