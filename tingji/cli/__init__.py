"""The entry points: the ``tingji`` command (``main``: its arguments; ``local``: what
runs here; ``commands``, ``submit`` and ``console``: what talks to a running service),
``doctor``, ``service`` and ``mcp_server``.  They sit on top of everything: no module of
``db``, ``server``, ``worker`` or the ``tingji`` library imports them
(``tests/unit/test_structure.py``)."""
