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

_MAY_HOLD_SECRETS = re.compile(r"URL|TOKEN|KEY|SECRET|PASSWORD")


class SettingsError(ValueError):
    """One or more ``TINGJI_*`` variables hold a value tingji cannot use."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n  " + "\n  ".join(problems))


SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
DEVICES = ("auto", "cpu", "cuda")
ENGINES = ("torch", "onnx", "auto")

Parse = Callable[[str], Any]
Check = Callable[[Any], "str | None"]


def is_loopback(host: str) -> bool:
    """Whether a bind address reaches this machine only."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hotwords_file(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        from tingji.hotwords import read_hotwords_file

        read_hotwords_file(path)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return str(exc)
    return None


def _setting(default: Any, parse: Parse, check: Check | None = None, *,
             factory: Callable[[], Any] | None = None) -> Any:
    """One ``TINGJI_<NAME>`` setting: its default (or a ``factory`` for it), how its text
    is parsed (ValueError with a reason) and checked (a reason, or None).
    ``Settings.from_env`` reads every field declared this way; the README's table is
    tested against these names."""
    meta = {"parse": parse, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def default_data_dir() -> Path:
    """The user data folder (``~/.local/share/tingji`` on Linux, ``$XDG_DATA_HOME``
    honoured): every command finds the same data wherever it is run from."""
    from platformdirs import user_data_path

    return user_data_path("tingji", appauthor=False)


def _raise(message: str) -> Any:
    raise ValueError(message)


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be an integer") from None


def _float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError("must be a number") from None


def _optional_int(raw: str) -> int | None:
    return _int(raw) if raw else None


def _optional(raw: str) -> str | None:
    return raw or None


def _required(what: str) -> Parse:
    return lambda raw: raw or _raise(what)


def _between(lo: float, hi: float | None = None, *, optional: bool = False) -> Check:
    def check(v: Any) -> str | None:
        if v is None and optional:
            return None
        if hi is None:
            return None if v >= lo else (f"must be at least {lo}" if lo else "must be >= 0")
        return None if lo <= v <= hi else f"must be between {lo} and {hi}"
    return check


def _positive(v: float) -> str | None:
    return None if v > 0 else "must be greater than 0"


def _choice(options: tuple[str, ...], *, upper: bool) -> Parse:
    def parse(raw: str) -> str:
        v = raw.upper() if upper else raw.lower()
        if v not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return v
    return parse


def _http_url(raw: str) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("must be an http(s) URL such as https://api.deepseek.com/v1")
    return raw


def _proxy_url(raw: str) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https", "socks4", "socks4a", "socks5", "socks5h") \
            or not parts.netloc:
        raise ValueError("must be a proxy URL such as http://127.0.0.1:7890 or "
                         "socks5://127.0.0.1:1080")
    return raw


def _folders(raw: str) -> tuple[Path, ...]:
    """Folders separated by ``:`` (``os.pathsep``) or commas; each must exist."""
    out = []
    for piece in (p.strip() for p in raw.replace(",", os.pathsep).split(os.pathsep)):
        if not piece:
            continue
        folder = Path(piece).expanduser()
        if not folder.is_dir():
            raise ValueError(f"{piece}: no such folder")
        out.append(folder.resolve())
    return tuple(out)


def _bool(raw: str) -> bool:
    low = raw.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("must be true or false (1/0, yes/no, on/off)")


def _names(raw: str) -> tuple[str, ...]:
    """A comma- or space-separated list, e.g. ``transcribe.example.org, other.example``."""
    return tuple(n for n in re.split(r"[,\s]+", raw) if n)


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


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = _setting(None, lambda r: Path(r).expanduser() if r else
                              _raise("must not be empty"), factory=default_data_dir)
    database_url: str = _setting("", _database_url)  # filled from data_dir when empty
    lease_seconds: int = _setting(60, _int, _between(5))
    max_attempts: int = _setting(3, _int, _between(1))
    max_pending: int = _setting(1000, _int, _positive)
    sqlite_synchronous: str = _setting("FULL", _choice(SQLITE_SYNCHRONOUS, upper=True))
    retry_backoff_seconds: float = _setting(10.0, _float, _between(0))
    # a site's refusal (HTTP 412/429, risk control) or a network failure while fetching
    # is tried again, with a growing backoff (at most an hour), for this long without
    # using up the task's attempts; then the task fails with the refusal's code
    fetch_retry_hours: float = _setting(12.0, _float, _between(0))
    # API (and the command line's way to reach it)
    url: str = _setting("http://127.0.0.1:8000",
                        lambda r: (_http_url(r) or _raise("must not be empty")).rstrip("/"))
    # where a worker fetches an upload it does not find on its own disk (the API that
    # stored it, on another machine); None: uploads are read from this machine's disk only
    api_url: str | None = _setting(None, lambda r: (_http_url(r) or "").rstrip("/") or None)
    host: str = _setting("127.0.0.1", _required("must not be empty"))
    port: int = _setting(8000, _int, lambda v: None if 1 <= v <= 65535
                         else "must be a port number (1-65535)")
    api_token: str | None = _setting(None, _optional)
    max_upload_mb: int = _setting(2048, _int, _positive)
    # uploads arriving at once, and the bytes the uploads folder may hold (files waiting
    # for their tasks, and those arriving): beyond them 429 and 507, before the body
    max_concurrent_uploads: int = _setting(4, _int, _positive)
    max_pending_upload_gb: float = _setting(20.0, _float, _positive)
    # how long POST /v1/audio/transcriptions holds the request for the result
    sync_wait_seconds: float = _setting(600.0, _float, _between(0, 86_400))
    # requests held open at once: OpenAI-route waits (beyond: 202 with the task id at
    # once) and live event streams (beyond: 503 + Retry-After)
    max_sync_waiters: int = _setting(32, _int, _between(0, 10_000))
    max_event_streams: int = _setting(64, _int, _between(1, 10_000))
    # Host names (besides loopback names, IP literals and the bind host) the API answers
    # to: a reverse proxy's public name.  "*" turns the check off.
    allowed_hosts: tuple[str, ...] = _setting((), _names)
    # worker
    asr_model: str = _setting("paraformer-zh", _required("must name a model id or a folder"))
    vad_model: str | None = _setting("fsmn-vad", _optional)
    punc_model: str | None = _setting("ct-punc", _optional)
    # labels speakers for tasks that ask (speakers=auto or 2-16); loaded at the first one
    spk_model: str | None = _setting("cam++", _optional)
    device: str = _setting("auto", _choice(DEVICES, upper=False))
    # what runs the models: torch, onnx (ONNX Runtime on the CPU, graphs from `tingji
    # models export-onnx`), or auto (onnx on a CPU when exported, else torch)
    engine: str = _setting("auto", _choice(ENGINES, upper=False))
    # the ONNX engine's int8 graphs (model_quant.onnx) when the export has them
    onnx_int8: bool = _setting(True, _bool)
    batch_size_s: int = _setting(300, _int, _positive)
    cpu_batch_size_s: int = _setting(60, _int, _between(0))
    # None: 8 on CUDA, 1 on a CPU
    asr_batch_tasks: int | None = _setting(None, _optional_int, _between(1, 256, optional=True))
    # threads each model computes with (torch's and ONNX Runtime's intra-op threads);
    # None: every core.  Lower it where other work shares the cores (two workers on one
    # machine): threads that outnumber the cores spin and slow every process down
    asr_threads: int | None = _setting(None, _optional_int, _between(1, 1024, optional=True))
    # a transcription's decoded pieces are written to the database at least this often
    # (seconds of work), so a crash costs at most that much; 0: only at the end
    asr_checkpoint_s: float = _setting(60.0, _float, _between(0))
    # a task whose audio and transcription settings match a completed task's takes its
    # sentences instead of transcribing (a submission's ``reuse: false`` turns it off)
    reuse: bool = _setting(True, _bool)
    # the task's audio kept as a small Opus file (32 kbit/s) beside its results, for the
    # page to play along with the transcript (GET /api/v1/task/{id}/audio)
    keep_audio: bool = _setting(True, _bool)
    # a video's own human-made Chinese subtitles become the transcript, without ASR
    # (a submission's ``subtitles_first`` decides for its task)
    subtitles_first: bool = _setting(False, _bool)
    # None: a quarter of the cores (max 4) on CUDA, 0 on a CPU
    vad_processes: int | None = _setting(None, _optional_int, _between(0, 64, optional=True))
    io_concurrency: int = _setting(4, _int, _positive)
    max_download_mb: int = _setting(4096, _int, _positive)
    # a URL task with burn_subtitles downloads the video too: at most this much
    max_video_mb: int = _setting(2048, _int, _positive)
    # a Netscape cookies file for yt-dlp (members-only or high-quality Bilibili audio);
    # its contents never reach logs, errors or the database
    ytdlp_cookies: Path | None = _setting(None, lambda r: Path(r).expanduser() if r else None,
                                          lambda p: None if p is None or p.is_file()
                                          else "no such file")
    max_duration_s: float = _setting(6 * 3600.0, _float, _positive)
    max_list_items: int = _setting(200, _int, _between(1, 10_000))
    # hotwords every task gets (one or more per line), merged after the task's own
    hotwords_file: Path | None = _setting(None, lambda r: Path(r).expanduser() if r else None,
                                          _hotwords_file)
    # networks URL tasks may reach although they are not public (loopback, private,
    # link-local...): "1" allows every address, or a list such as 192.168.1.10/32
    allow_private_urls: tuple[str, ...] = _setting((), _networks)
    # the proxy media downloads (yt-dlp) go through; HTTP(S)_PROXY / ALL_PROXY in the
    # environment are not used by downloads nor webhooks
    proxy: str | None = _setting(None, _proxy_url)
    drain_seconds: float = _setting(30.0, _float, _between(0))
    # a worker whose resident memory passes this (MB) after a task finishes what it
    # holds and exits to be restarted at once (`tingji run`, the service unit); None: never
    worker_max_rss_mb: int | None = _setting(None, _optional_int, _between(1, optional=True))
    # text: lines for people; json: one object per line (task_id, worker_id, stage)
    log_format: str = _setting("text", _choice(("text", "json"), upper=False))
    worker_nice: int = _setting(10, _int, _between(0, 19))
    heartbeat_seconds: float = _setting(2.0, _float, _between(0.1, 60))
    vad_max_end_silence_ms: int | None = _setting(None, _optional_int,
                                                  lambda v: None if v is None or v > 0
                                                  else "must be greater than 0")
    task_timeout_base_s: float = _setting(900.0, _float, _positive)
    task_timeout_factor: float = _setting(3.0, _float, _between(0))
    # LLM (OpenAI-compatible)
    llm_base_url: str | None = _setting(None, _http_url)
    llm_api_key: str | None = _setting(None, _optional)
    llm_model: str | None = _setting(None, _optional)
    llm_concurrency: int = _setting(4, _int, _positive)
    llm_timeout_seconds: float = _setting(120.0, _float, _positive)
    llm_max_retries: int = _setting(4, _int, _between(0, 20))
    llm_chunk_chars: int = _setting(1500, _int, _between(50))
    llm_max_tokens: int = _setting(4096, _int, _positive)
    # models a task may ask for besides llm_model; "*": any
    llm_models: tuple[str, ...] = _setting((), _names)
    # `tingji mcp`: the folders whose audio and video agents may send (transcribe_file;
    # none: the tool is off), and the bearer token its HTTP transport requires (one is
    # made and printed at start when unset)
    mcp_file_roots: tuple[Path, ...] = _setting((), _folders)
    mcp_token: str | None = _setting(None, _optional)
    # webhooks: each task's final status and each batch's end, POSTed and signed
    webhook_url: str | None = _setting(None, _http_url)
    webhook_secret: str | None = _setting(None, _optional)
    # signs deliveries to submitters' own callback_url (unsigned without it): never the
    # webhook secret, which a submitter could otherwise collect and replay to the
    # operator's receiver
    callback_secret: str | None = _setting(None, _optional)
    # non-public networks TINGJI_WEBHOOK_URL (the operator's receiver) may reach,
    # without opening them to media URLs and callback URLs ("1": every address)
    webhook_allow_private: tuple[str, ...] = _setting((), _networks)
    webhook_max_attempts: int = _setting(12, _int, _between(1, 100))
    webhook_retry_seconds: float = _setting(10.0, _float, _between(0))

    @property
    def llm_configured(self) -> bool:
        return bool(self.llm_base_url and self.llm_model)

    def llm_model_allowed(self, model: str) -> bool:
        """Whether a task may ask for ``model`` (it is billed to the operator's key)."""
        return model == self.llm_model or model in self.llm_models or "*" in self.llm_models

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "uploads"  # tingji.taskfiles owns the layout below these

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

        for f in fields(cls):
            var = "TINGJI_" + f.name.upper()
            raw = env.get(var)
            if raw is None:
                continue
            # a URL, token, key or secret may hold a password: its value is not repeated
            shown = f"{var} (its value not shown)" if _MAY_HOLD_SECRETS.search(var) \
                else f"{var}={raw!r}"
            try:
                value = f.metadata["parse"](raw.strip())
            except ValueError as exc:
                problems.append(f"{shown}: {exc}")
                continue
            check = f.metadata["check"]
            why = check(value) if check else None
            if why:
                problems.append(f"{shown}: {why}")
                continue
            values[f.name] = value

        if values.get("llm_base_url") and not values.get("llm_model"):
            problems.append("TINGJI_LLM_MODEL must be set when TINGJI_LLM_BASE_URL is set")
        defaults = cls()
        if values.get("heartbeat_seconds", defaults.heartbeat_seconds) * 3 > \
                values.get("lease_seconds", defaults.lease_seconds):
            problems.append("TINGJI_HEARTBEAT_SECONDS must be at most a third of "
                            "TINGJI_LEASE_SECONDS, or leases expire between heartbeats")
        if problems:
            raise SettingsError(problems)

        data_dir = values["data_dir"] = Path(values.get("data_dir")
                                             or default_data_dir()).resolve()
        if not values.get("database_url"):
            values["database_url"] = f"sqlite:///{data_dir / 'tingji.db'}"
        return cls(**values)

    @classmethod
    def env_names(cls) -> list[str]:
        return ["TINGJI_" + f.name.upper() for f in fields(cls)]

