"""Every ``TINGJI_*`` setting, read once at an entry point and validated there.

No module reads ``os.environ`` on import: ``Settings.from_env()`` is called by
the CLI (or a test) and the resulting object is passed down.  Every bad value
is reported at once, in one message, before anything starts.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class SettingsError(ValueError):
    """One or more ``TINGJI_*`` variables hold a value tingji cannot use."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("data")
    database_url: str = ""  # filled from data_dir when empty
    lease_seconds: int = 60
    max_attempts: int = 3
    max_pending: int = 1000
    sqlite_synchronous: str = "FULL"
    retry_backoff_seconds: float = 10.0
    # API (and the command line's way to reach it)
    url: str = "http://127.0.0.1:8000"
    host: str = "127.0.0.1"
    port: int = 8000
    api_token: str | None = None
    max_upload_mb: int = 2048
    # Host names (besides loopback names, IP literals and the bind host) the API answers
    # to: a reverse proxy's public name.  "*" turns the check off.
    allowed_hosts: tuple[str, ...] = ()
    # worker
    asr_model: str = "paraformer-zh"
    vad_model: str | None = "fsmn-vad"
    punc_model: str | None = "ct-punc"
    device: str = "auto"
    batch_size_s: int = 300
    cpu_batch_size_s: int = 60
    asr_batch_tasks: int | None = None  # None: 8 on CUDA, 1 on a CPU
    vad_processes: int | None = None  # None: a quarter of the cores (max 4) on CUDA, 0 on a CPU
    io_concurrency: int = 4
    max_download_mb: int = 4096
    max_duration_s: float = 6 * 3600.0
    # networks URL tasks may reach although they are not public (loopback, private,
    # link-local...): "1" allows every address, or a list such as 192.168.1.10/32
    allow_private_urls: tuple[str, ...] = ()
    drain_seconds: float = 30.0
    worker_nice: int = 10
    heartbeat_seconds: float = 2.0
    vad_max_end_silence_ms: int | None = None
    task_timeout_base_s: float = 900.0
    task_timeout_factor: float = 3.0
    # LLM (OpenAI-compatible)
    llm_base_url: str | None = None
    llm_api_key: str | None = None
    llm_model: str | None = None
    llm_concurrency: int = 4
    llm_timeout_seconds: float = 120.0
    llm_max_retries: int = 4
    llm_chunk_chars: int = 1500
    llm_max_tokens: int = 4096
    llm_models: tuple[str, ...] = ()  # models a task may ask for besides llm_model; "*": any
    # derived, not read from the environment
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_base_url and self.llm_model)

    def llm_model_allowed(self, model: str) -> bool:
        """Whether a task may ask for ``model`` (it is billed to the operator's key)."""
        return model == self.llm_model or model in self.llm_models or "*" in self.llm_models

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Build settings from ``TINGJI_*`` variables; raise ``SettingsError`` listing
        every bad value."""
        env = os.environ if env is None else env
        problems: list[str] = []
        values: dict[str, Any] = {}

        def read(name: str, parse: Callable[[str], Any], check: Callable[[Any], str | None]
                 | None = None) -> None:
            var = "TINGJI_" + name.upper()
            raw = env.get(var)
            if raw is None:
                return
            try:
                value = parse(raw.strip())
            except ValueError as exc:
                problems.append(f"{var}={raw!r}: {exc}")
                return
            why = check(value) if check else None
            if why:
                problems.append(f"{var}={raw!r}: {why}")
                return
            values[name] = value

        def positive(v: float) -> str | None:
            return None if v > 0 else "must be greater than 0"

        def port(v: int) -> str | None:
            return None if 1 <= v <= 65535 else "must be a port number (1-65535)"

        def choice(options: tuple[str, ...]) -> Callable[[str], str]:
            def parse(raw: str) -> str:
                v = raw.lower() if options is DEVICES else raw.upper()
                if v not in options:
                    raise ValueError(f"must be one of {', '.join(options)}")
                return v
            return parse

        def optional(raw: str) -> str | None:
            return raw or None

        def http_url(raw: str) -> str | None:
            if not raw:
                return None
            parts = urlsplit(raw)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an http(s) URL such as https://api.deepseek.com/v1")
            return raw

        read("data_dir", lambda r: Path(r) if r else _raise("must not be empty"))
        read("database_url", _database_url)
        read("lease_seconds", _int, lambda v: None if v >= 5 else "must be at least 5")
        read("max_attempts", _int, lambda v: None if v >= 1 else "must be at least 1")
        read("max_pending", _int, positive)
        read("sqlite_synchronous", choice(SQLITE_SYNCHRONOUS))
        read("retry_backoff_seconds", _float, lambda v: None if v >= 0 else "must be >= 0")
        read("url", lambda r: (http_url(r) or _raise("must not be empty")).rstrip("/"))
        read("host", lambda r: r or _raise("must not be empty"))
        read("port", _int, port)
        read("api_token", optional)
        read("max_upload_mb", _int, positive)
        read("allowed_hosts", _names)
        read("asr_model", lambda r: r or _raise("must name a model id or a folder"))
        read("vad_model", optional)
        read("punc_model", optional)
        read("device", choice(DEVICES))
        read("batch_size_s", _int, positive)
        read("cpu_batch_size_s", _int, lambda v: None if v >= 0 else "must be >= 0")
        read("asr_batch_tasks", lambda r: _int(r) if r else None,
             lambda v: None if v is None or 1 <= v <= 256 else "must be between 1 and 256")
        read("vad_processes", lambda r: _int(r) if r else None,
             lambda v: None if v is None or 0 <= v <= 64 else "must be between 0 and 64")
        read("io_concurrency", _int, positive)
        read("max_download_mb", _int, positive)
        read("max_duration_s", _float, positive)
        read("allow_private_urls", _networks)
        read("drain_seconds", _float, lambda v: None if v >= 0 else "must be >= 0")
        read("worker_nice", _int, lambda v: None if 0 <= v <= 19 else "must be 0-19")
        read("heartbeat_seconds", _float, lambda v: None if 0.1 <= v <= 60 else
             "must be between 0.1 and 60")
        read("vad_max_end_silence_ms", lambda r: _int(r) if r else None,
             lambda v: None if v is None or v > 0 else "must be greater than 0")
        read("task_timeout_base_s", _float, positive)
        read("task_timeout_factor", _float, lambda v: None if v >= 0 else "must be >= 0")
        read("llm_base_url", http_url)
        read("llm_api_key", optional)
        read("llm_model", optional)
        read("llm_concurrency", _int, positive)
        read("llm_timeout_seconds", _float, positive)
        read("llm_max_retries", _int, lambda v: None if 0 <= v <= 20 else "must be 0-20")
        read("llm_chunk_chars", _int, lambda v: None if v >= 50 else "must be at least 50")
        read("llm_max_tokens", _int, positive)
        read("llm_models", _names)

        if values.get("llm_base_url") and not values.get("llm_model"):
            problems.append("TINGJI_LLM_MODEL must be set when TINGJI_LLM_BASE_URL is set")
        defaults = cls()
        if values.get("heartbeat_seconds", defaults.heartbeat_seconds) * 3 > \
                values.get("lease_seconds", defaults.lease_seconds):
            problems.append("TINGJI_HEARTBEAT_SECONDS must be at most a third of "
                            "TINGJI_LEASE_SECONDS, or leases expire between heartbeats")
        if problems:
            raise SettingsError(problems)

        data_dir = values["data_dir"] = Path(values.get("data_dir", "data")).resolve()
        if not values.get("database_url"):
            values["database_url"] = f"sqlite:///{data_dir / 'tingji.db'}"
        return cls(**values)

    @classmethod
    def env_names(cls) -> list[str]:
        return ["TINGJI_" + f.name.upper() for f in fields(cls) if f.name != "extra"]


def _raise(message: str) -> Any:
    raise ValueError(message)


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be an integer") from None


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _networks(raw: str) -> tuple[str, ...]:
    """true/false, or a list of IP networks (``10.0.0.0/8, 192.168.1.10``)."""
    try:
        return ("0.0.0.0/0", "::/0") if _bool(raw) else ()
    except ValueError:
        pass
    out = []
    for name in _names(raw):
        try:
            out.append(str(ipaddress.ip_network(name, strict=False)))
        except ValueError:
            raise ValueError(f"{name!r} is not an IP network; give 1/0 or a list such as "
                             "192.168.1.0/24, 10.0.0.5") from None
    return tuple(out)


def _names(raw: str) -> tuple[str, ...]:
    """A comma- or space-separated list, e.g. ``transcribe.example.org, other.example``."""
    return tuple(n for n in re.split(r"[,\s]+", raw) if n)


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("must be a number") from None


def _database_url(raw: str) -> str:
    if raw.startswith("sqlite:"):
        if not raw.startswith("sqlite:///") or raw == "sqlite:///":
            raise ValueError("SQLite URLs look like sqlite:///relative/path.db or "
                             "sqlite:////absolute/path.db")
        if raw.startswith("sqlite:///:memory:"):
            raise ValueError("an in-memory database cannot be shared by the API and the worker")
        return raw
    scheme = raw.split("://", 1)[0]
    if scheme in ("postgresql", "postgres", "postgresql+asyncpg", "postgresql+psycopg"):
        if "://" not in raw or not raw.split("://", 1)[1]:
            raise ValueError("PostgreSQL URLs look like postgresql://user@host:5432/dbname")
        return raw
    raise ValueError("must be a sqlite:///path or postgresql://... URL")
