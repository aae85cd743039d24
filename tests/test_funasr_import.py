"""Change 6 of ``worker.engines.torch.patches``, the lean import of funasr, in a fresh
interpreter (a test process has all of funasr imported already): the families the
worker builds are in funasr's tables without the rest of it, and a name outside them
brings the rest in.  A process of its own, so not in ``tests/unit``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("funasr")


LEAN_CHECK = """
import sys
from worker.engines.torch import patches
funasr = patches.import_funasr()
from funasr import AutoModel
from funasr.register import tables
assert funasr.__version__ == patches.funasr_version(), funasr.__version__
assert AutoModel.__module__ == "funasr.auto.auto_model"
lean = sorted(m for m in sys.modules if m.startswith("funasr."))
assert "funasr.models.sense_voice.model" not in sys.modules
for name in ("SeacoParaformer", "BiCifParaformer", "FsmnVADStreaming", "CTTransformer",
             "CAMPPlus"):
    assert dict.__contains__(tables.model_classes, name), name
assert tables.frontend_classes.get("WavFrontend") is not None
assert tables.tokenizer_classes.get("CharTokenizer") is not None
assert patches.import_funasr() is funasr
assert "sklearn" not in sys.modules  # CAM++'s clustering waits for a speaker task
# the registry's printout places each class where inspect does, found by a scan
import inspect
placed = 0
for name, meta in list(vars(tables).items()):
    if name.endswith("_classes_meta"):
        for key, (_, _, where) in meta.items():
            cls = dict.__getitem__(getattr(tables, name[:-len("_meta")]), key)
            assert where.endswith(f":{inspect.getsourcelines(cls)[1]}"), (where, cls)
            placed += 1
assert placed >= 30, placed
# a model outside the lean import: the table imports the rest and finds it
assert tables.model_classes.get("SenseVoiceSmall") is not None
assert "funasr.models.sense_voice.model" in sys.modules
# the clustering stands in until called, then is funasr's own
from funasr.models.campplus.cluster_backend import ClusterBackend
backend = ClusterBackend()
from funasr.models.campplus.cluster_backend import ClusterBackend as real
assert ClusterBackend is not real and isinstance(backend, real), (ClusterBackend, real)
assert real.__module__ == "funasr.models.campplus.cluster_backend" and "sklearn" in sys.modules
print(len(lean), len([m for m in sys.modules if m.startswith("funasr.")]))
"""


def test_funasr_is_imported_lean_and_completes_on_a_miss() -> None:
    """Lean where it can be, complete where it must be."""
    run = subprocess.run([sys.executable, "-c", LEAN_CHECK], capture_output=True,
                         text=True, timeout=300, cwd=Path(__file__).parents[1])
    assert run.returncode == 0, run.stderr[-3000:]
    lean, complete = map(int, run.stdout.split())
    assert lean * 2 < complete, (lean, complete)
