"""Logging for the API and the worker: plain lines for people, or one JSON object per
line (``TINGJI_LOG_FORMAT=json``) for log collectors.

Where they apply, JSON lines carry ``task_id``, ``worker_id`` and ``stage``: from the
record's ``extra``, else from the context the worker binds for the asyncio task at hand
(``bind``), which child tasks inherit.
"""

from __future__ import annotations

import io
import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

FIELDS = ("task_id", "worker_id", "stage")
_context: ContextVar[dict[str, str] | None] = ContextVar("tingji_log_context", default=None)


def bind(**fields: str | None) -> None:
    """Add fields to the log context of the current asyncio task (and the tasks it
    starts from now on); None removes one."""
    ctx = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    for k in [k for k, v in fields.items() if v is None]:
        ctx.pop(k, None)
    _context.set(ctx)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(), "logger": record.name,
            "message": record.getMessage()}
        ctx = _context.get() or {}
        for name in FIELDS:
            value = getattr(record, name, None) or ctx.get(name)
            if value is not None:
                doc[name] = str(value)
        for name in ("method", "path", "status"):  # the API's request fields, when given
            if (value := getattr(record, name, None)) is not None:
                doc[name] = value
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


class _LinesToLog(io.TextIOBase):
    """A text stream whose lines become log records: with JSON logs, what libraries
    ``print`` (funasr's banner, progress bars) is JSON too, not a stray line."""

    def __init__(self, logger: logging.Logger, level: int) -> None:
        self.logger, self.level, self.pending = logger, level, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            line = line.rsplit("\r", 1)[-1].strip()  # a progress bar: its last state
            if line:
                self.logger.log(self.level, "%s", line)
        return len(text)

    def flush(self) -> None:
        pass


def _not_noise(record: logging.LogRecord) -> bool:
    """funasr warns ``trust_remote_code: False`` on the root logger for every model it
    builds: the setting tingji always passes (``worker.engines.model_folders``), not a
    problem, so it is not printed."""
    return not (record.name == "root" and str(record.msg).startswith("trust_remote_code:"))


def configure(fmt: str = "text") -> None:
    """The root handler for a tingji process.  funasr logs chatty INFO lines on the root
    logger: those stay at WARNING; tingji's own at INFO.  With ``json``, what is printed
    to stdout or stderr is logged too (as ``stdout``/``stderr`` records)."""
    handler = logging.StreamHandler(sys.__stderr__)
    handler.addFilter(_not_noise)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("tingji").setLevel(logging.INFO)
    if fmt == "json":
        for name in ("stdout", "stderr"):
            logging.getLogger(name).setLevel(logging.INFO)
        sys.stdout = _LinesToLog(logging.getLogger("stdout"), logging.INFO)
        sys.stderr = _LinesToLog(logging.getLogger("stderr"), logging.WARNING)
