"""Put on PYTHONPATH by tests: torch, torchaudio and funasr are not installed for this
process.  Importing them raises ``ModuleNotFoundError`` as it does where they are
absent (``tests/test_onnx.py`` runs a worker this way: a worker installed with
``tingji[worker-onnx]`` has neither)."""

import importlib.abc
import importlib.machinery
import os
import sys

BLOCKED = ("torch", "torchaudio", "funasr")


class _Absent(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):  # noqa: ANN001, ANN201
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):  # noqa: ANN001, ANN201
        record = os.environ.get("NOTORCH_LOG")  # the tests' proof that it was refused
        if record:
            with open(record, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {spec.name}\n")
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

    def exec_module(self, module):  # noqa: ANN001, ANN201  (never reached)
        raise ModuleNotFoundError(f"No module named {module.__name__!r}")


sys.meta_path.insert(0, _Absent())
