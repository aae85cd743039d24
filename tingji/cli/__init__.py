"""The entry points: the ``tingji`` command (``main``), its client commands
(``commands``), ``doctor``, ``service`` and ``mcp_server``.  They sit on top of
everything: no module of ``db``, ``server``, ``worker`` or the ``tingji`` library
imports them (``tests/unit/test_structure.py``)."""

from tingji.cli.main import main

__all__ = ["main"]
