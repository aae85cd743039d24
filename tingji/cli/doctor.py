"""``tingji doctor`` and ``tingji models download``.

The doctor checks what a task would otherwise find out by failing: one line per check,
and for each problem the fix.  It never loads a model (that takes a GPU's worth of
memory); it checks that the files are there, or where they would come from.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import httpx

from tingji.settings import Settings, is_loopback
from worker.engines.model_sources import cached, folder_problem, hub_names, hub_reachable

GIB = 1024**3
# demuxers every ordinary upload needs; the rest of worker.stages.media.DEMUXERS are rarer
ESSENTIAL_DEMUXERS = ("wav", "mp3", "mov", "matroska", "aac", "flac", "ogg")


@dataclass(frozen=True, slots=True)
class Finding:
    name: str
    ok: bool | None  # None: worth knowing, not a problem
    detail: str
    fix: str = ""

    def line(self) -> str:
        mark = {True: "[ ok ]", False: "[FAIL]", None: "[note]"}[self.ok]
        fix = f" -- fix: {self.fix}" if self.fix and self.ok is False else ""
        return f"{mark} {self.name}: {self.detail}{fix}"


# ------------------------------------------------------------------ the checks
def check_python(settings: Settings) -> Iterator[Finding]:
    v = sys.version_info
    yield Finding("python", v >= (3, 11), f"{sys.executable} {v.major}.{v.minor}.{v.micro}",
                  "tingji needs Python 3.11 or newer")
    versions = {}
    for dist in ("tingji", "sqlalchemy", "litestar", "alembic", "mcp", "funasr", "torch",
                 "onnxruntime", "yt-dlp", "openai"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    # the engine's own: torch's funasr and torch, or ONNX Runtime (auto: either)
    torch_ok = bool(versions["funasr"] and versions["torch"])
    optional = {"onnxruntime"} if settings.engine == "torch" else {"funasr", "torch"}
    if settings.engine == "auto":
        optional = {"funasr", "torch", "onnxruntime"} if (
            torch_ok or versions["onnxruntime"]) else {"onnxruntime"}
    found = ", ".join(f"{d} {v}" for d, v in versions.items() if v)
    missing = [d for d, v in versions.items() if v is None and d not in optional]
    yield Finding("packages", not missing, found + (f"; missing: {', '.join(missing)}"
                                                     if missing else ""),
                  "scripts/setup.sh, or pip install 'tingji[worker]' (a worker needs funasr, "
                  "torch, yt-dlp and openai; the API alone does not), or for the ONNX "
                  "engine alone 'tingji[worker-onnx]'")


def check_ffmpeg() -> Iterator[Finding]:
    from worker.stages.media import DEMUXERS, ffmpeg_exe

    try:
        exe = ffmpeg_exe()
    except RuntimeError:
        yield Finding("ffmpeg", False, "not found on PATH, and imageio-ffmpeg is not "
                      "installed", "apt install ffmpeg (or pip install imageio-ffmpeg)")
        return
    try:
        version = subprocess.run([exe, "-hide_banner", "-version"], capture_output=True,
                                 text=True, timeout=20).stdout.split("\n", 1)[0]
        listing = subprocess.run([exe, "-hide_banner", "-demuxers"], capture_output=True,
                                 text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        yield Finding("ffmpeg", False, f"{exe} does not run: {exc}",
                      "apt install ffmpeg (or pip install imageio-ffmpeg)")
        return
    have = {name for line in listing.splitlines()[4:] if len(parts := line.split()) >= 2
            for name in parts[1].split(",")}
    wanted = {n for group in DEMUXERS.split(",") for n in group.split(",")}
    essential = [d for d in ESSENTIAL_DEMUXERS if d not in have]
    rare = sorted(d for d in wanted - have if d not in ESSENTIAL_DEMUXERS)
    yield Finding("ffmpeg", not essential,
                  f"{exe} ({version.removeprefix('ffmpeg version ').split(' ')[0]})"
                  + (f"; lacks the demuxers {', '.join(essential)}" if essential else
                     "; reads the allowed containers"
                     + (f" (not: {', '.join(rare)})" if rare else "")),
                  "a full ffmpeg build (apt install ffmpeg), or pip install imageio-ffmpeg "
                  "and take it off PATH")


def model_roles(settings: Settings) -> list[tuple[str, str, str | None]]:
    """(role, setting, model) for every model the worker may load."""
    return [("ASR", "TINGJI_ASR_MODEL", settings.asr_model),
            ("VAD", "TINGJI_VAD_MODEL", settings.vad_model),
            ("punctuation", "TINGJI_PUNC_MODEL", settings.punc_model),
            ("speaker", "TINGJI_SPK_MODEL", settings.spk_model)]


def check_models(settings: Settings, *, network: bool = True) -> Iterator[Finding]:
    for finding in _check_models(settings, network=network):
        if finding.name == "model speaker" and finding.ok is False:
            # only tasks that ask for speaker labels load it: worth knowing, not a failure
            yield Finding(finding.name, None, f"{finding.detail}; only tasks that ask for "
                          f"speaker labels need it -- {finding.fix}")
        else:
            yield finding


def _check_models(settings: Settings, *, network: bool) -> Iterator[Finding]:
    names = hub_names()
    for role, var, model in model_roles(settings):
        what = f"model {role}"
        if not model:
            yield Finding(what, None, f"none ({var} is empty)")
            continue
        folder = Path(model).expanduser()
        if folder.is_dir():
            why = folder_problem(folder)
            yield Finding(what, why is None, f"{folder}" + (f": {why}" if why else " (complete)"),
                          f"copy the whole model folder again, or point {var} at a complete "
                          "one (`tingji models download --to DIR` makes one)")
            continue
        if model.startswith(("/", ".", "~")) or folder.exists():
            yield Finding(what, False, f"{model}: no such folder",
                          f"point {var} at a model folder, or at a hub id such as "
                          "paraformer-zh")
            continue
        hub_id = names.get(model, model)
        where = cached(hub_id)
        if where:
            yield Finding(what, True, f"{model} -> {hub_id}, cached in {where}")
            continue
        reachable = network and hub_reachable(hub_id)
        yield Finding(what, True if reachable else False,
                      f"{model} -> {hub_id}: not cached, "
                      + ("but ModelScope answers, so the worker downloads it at its first start"
                         if reachable else "and ModelScope cannot be reached from here"),
                      f"on a machine with network, `tingji models download --to DIR`; carry "
                      f"DIR here and set the {var} line it prints")


def check_engine(settings: Settings) -> Iterator[Finding]:
    """With ``TINGJI_ENGINE=onnx`` (or ``auto``): ONNX Runtime and each model's graphs."""
    if settings.engine == "torch":
        return
    # auto falls back to torch, where torch is installed
    needed = True if settings.engine == "onnx" or importlib.util.find_spec("torch") is None \
        else None
    if importlib.util.find_spec("onnxruntime") is None:
        yield Finding("engine", False if needed else None,
                      f"TINGJI_ENGINE={settings.engine}: onnxruntime is not installed",
                      "pip install 'tingji[onnx]'")
        return
    from worker.engines.onnx.graphs import EXPORT_HINT, GRAPH_ROLES, GraphsMissing, find_graphs

    for role, var, model in model_roles(settings):
        if role not in GRAPH_ROLES or not model:
            continue
        try:
            folder = find_graphs(model, settings.data_dir, role, var)
        except GraphsMissing:
            yield Finding(f"onnx {role}", False if needed else None,
                          f"{model}: not exported" + ("" if needed else
                                                      " (auto: the worker runs torch; "
                                                      f"`{EXPORT_HINT}` makes the graphs "
                                                      "of the faster CPU engine)"),
                          EXPORT_HINT)
            continue
        graphs = ", ".join(sorted(p.name for p in folder.glob("*.onnx")))
        yield Finding(f"onnx {role}", True, f"{folder} ({graphs})")
    if settings.onnx_int8 and settings.device != "cuda":
        yield from _int8_speed(cpu_flags())


CPUINFO = Path("/proc/cpuinfo")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The x86 CPU's feature flags (Linux); empty where they cannot be read."""
    try:
        text = cpuinfo.read_text(encoding="ascii", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def _int8_speed(flags: set[str]) -> Iterator[Finding]:
    """What the int8 graphs gain on this CPU (bench/pipeline.py on 2-core AMD EPYCs and
    an Intel Xeon): with VNNI, 8-bit products are summed in 32 bits in one instruction;
    with AVX2 alone they take three, and int8 buys much less."""
    if flags & {"avx512_vnni", "avx_vnni"}:
        yield Finding("cpu int8", True, "VNNI: the int8 graphs run about 1.9x the fp32 ones "
                      "(measured 0.23-0.32 of bare funasr's time on 2 cores)")
    elif "avx2" in flags:
        yield Finding("cpu int8", None, "AVX2 without VNNI: the int8 graphs gain about 1.4x "
                      "over fp32 on this CPU (measured 0.46 of bare funasr's time on 2 "
                      "cores, against 0.23-0.32 with VNNI)")


def check_cuda(settings: Settings) -> Iterator[Finding]:
    if importlib.util.find_spec("torch") is None:
        return  # the packages line says so
    import torch

    if not torch.cuda.is_available():
        yield Finding("cuda", False if settings.device == "cuda" else None,
                      f"no CUDA device (torch {torch.__version__}); the worker runs on the CPU",
                      "TINGJI_DEVICE=auto or cpu, or install a CUDA build of torch that "
                      "matches the driver")
        return
    free, total = torch.cuda.mem_get_info()
    yield Finding("cuda", True, f"{torch.cuda.get_device_name(0)}, {free / GIB:.1f} of "
                  f"{total / GIB:.1f} GiB free (torch {torch.__version__})")


def check_database(settings: Settings) -> Iterator[Finding]:
    from db import migrate

    url = settings.database_url
    shown = url.split("://")[0] + (f" {url.removeprefix('sqlite:///')}"
                                   if url.startswith("sqlite") else "")
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        yield Finding("database", None, f"{shown}: not created yet (the first start does)")
        return
    try:
        rev, head = migrate.current(url), migrate.head_revision()
    except Exception as exc:  # noqa: BLE001  (unreachable, wrong credentials, ...)
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        yield Finding("database", False, f"{shown}: cannot connect ({first})",
                      "start the database, or correct TINGJI_DATABASE_URL")
        return
    yield Finding("database", rev == head,
                  f"{shown} at revision {rev or 'none'}"
                  + ("" if rev == head else f", behind {head}"), "tingji db upgrade")


def check_disk(settings: Settings) -> Iterator[Finding]:
    place = settings.data_dir
    while not place.exists() and place != place.parent:
        place = place.parent
    free = shutil.disk_usage(place).free
    yield Finding("disk", True if free >= 5 * GIB else None if free >= GIB else False,
                  f"{free / GIB:.1f} GiB free for {settings.data_dir}",
                  "free some space (tingji prune --older-than DAYS removes old tasks' files), "
                  "or set TINGJI_DATA_DIR to a larger disk")


def check_exposure(settings: Settings) -> Iterator[Finding]:
    if is_loopback(settings.host):
        yield Finding("api", True, f"listens on {settings.host} (this machine only)"
                      + ("; token set" if settings.api_token else ""))
    elif settings.api_token:
        yield Finding("api", True, f"listens on {settings.host}, with a token")
    else:
        yield Finding("api", False, f"TINGJI_HOST={settings.host} reaches other machines and "
                      "no TINGJI_API_TOKEN is set (the API refuses to start)",
                      "set TINGJI_API_TOKEN, or TINGJI_HOST=127.0.0.1")


def check_llm(settings: Settings) -> Iterator[Finding]:
    if not settings.llm_configured:
        yield Finding("llm", None, "none configured: transcripts are not polished or "
                      "summarized (TINGJI_LLM_BASE_URL and TINGJI_LLM_MODEL)")
        return
    base = str(settings.llm_base_url).rstrip("/")
    headers = {"Authorization": f"Bearer {settings.llm_api_key}"} if settings.llm_api_key \
        else {}
    fix = "check TINGJI_LLM_BASE_URL, TINGJI_LLM_API_KEY and TINGJI_LLM_MODEL"
    try:
        resp = httpx.get(f"{base}/models", headers=headers, timeout=10)
    except httpx.HTTPError as exc:
        yield Finding("llm", False, f"{base}: cannot connect ({type(exc).__name__})", fix)
        return
    if resp.status_code in (401, 403):
        yield Finding("llm", False, f"{base}: the API key is refused ({resp.status_code})", fix)
        return
    try:
        ids = [m["id"] for m in resp.json()["data"]]
    except (ValueError, KeyError, TypeError):
        ids = []
    if resp.status_code != 200 or not ids:
        yield Finding("llm", None, f"{base} answers {resp.status_code} but lists no models; "
                      f"{settings.llm_model} is assumed")
    elif settings.llm_model in ids:
        yield Finding("llm", True, f"{base} offers {settings.llm_model}")
    else:
        yield Finding("llm", False, f"{base} does not offer {settings.llm_model} (it offers "
                      f"{', '.join(ids[:8])}{'...' if len(ids) > 8 else ''})", fix)


# ------------------------------------------------------------------ the running service
@dataclass(frozen=True, slots=True)
class Service:
    """What a running service says of itself (``GET /api/v1/queue``)."""

    url: str
    models: list[str]  # what its live workers loaded
    llm: bool


def running_service(settings: Settings, timeout: float = 2.0) -> Service | None:
    """The service this shell's ``tingji`` commands would talk to (``TINGJI_URL``, else
    this shell's host and port), if one answers."""
    import os

    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host
    url = (os.environ.get("TINGJI_URL") or f"http://{host}:{settings.port}").rstrip("/")
    token = os.environ.get("TINGJI_API_TOKEN") or settings.api_token
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(f"{url}/api/v1/queue", headers=headers, timeout=timeout,
                      follow_redirects=False)
        body = r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    if not isinstance(body, dict):
        return None
    models = sorted({str(w.get("model")) for w in body.get("workers") or []
                     if isinstance(w, dict) and w.get("alive") and w.get("model")})
    return Service(url, models, bool(body.get("llm")))


def check_service(service: Service | None) -> Iterator[Finding]:
    if service is None:
        yield Finding("service", None, "no service answers here; the checks below are of "
                      "this shell's settings, which `tingji run` started from here would use")
        return
    loaded = "; ".join(service.models) or "no model loaded yet"
    yield Finding("service", True, f"running at {service.url} (workers' models: {loaded}; "
                  f"LLM {'configured' if service.llm else 'not configured'})")
    yield Finding("service", None, "the checks below are of this shell's settings; the "
                  "running service may have been started with others (a FAIL it does not "
                  "share is marked as a note)")


# checks whose FAIL a running service that works proves does not apply to it
SHELL_ONLY = ("model ", "onnx ", "engine", "database", "llm")
MODEL_CHECKS = ("model ", "onnx ", "engine")


def softened(finding: Finding, service: Service | None) -> Finding:
    """A shell setting's FAIL beside a service that evidently does not share it."""
    if finding.ok is not False or service is None or not finding.name.startswith(SHELL_ONLY):
        return finding
    if finding.name.startswith(MODEL_CHECKS) and not service.models:
        return finding  # the service has not shown that its models load
    if finding.name.startswith("llm") and not service.llm:
        return finding
    return Finding(finding.name, None, f"{finding.detail} (this shell's settings; the "
                   f"service at {service.url} is working with its own)", finding.fix)


CHECKS: list[Callable[[Settings], Iterator[Finding]]] = [
    check_python, lambda s: check_ffmpeg(), check_models, check_engine,
    check_cuda,
    check_database, check_disk, check_exposure, check_llm]


def doctor(settings: Settings, out: Callable[[str], object] = print) -> int:
    """Runs every check, printing each finding as it comes; 0 if none failed."""
    failed = 0
    service = running_service(settings)
    for f in check_service(service):
        out(f.line())
    for check in CHECKS:
        try:
            findings = list(check(settings))
        except Exception as exc:  # noqa: BLE001  (a check that breaks is a finding too)
            findings = [Finding(getattr(check, "__name__", "check"), False,
                                f"the check itself failed: {type(exc).__name__}: {exc}")]
        for f in map(softened, findings, [service] * len(findings)):
            out(f.line())
            failed += f.ok is False
    out(f"{failed} problem(s) found" if failed else "no problems found")
    return 1 if failed else 0


# ------------------------------------------------------------------ models download
def download_models(settings: Settings, to: Path | None, out: Callable[[str], object] = print
                    ) -> int:
    """Fetches (or copies) every configured model once, into ``to`` (else the
    ModelScope cache), and prints the settings that use them."""
    names = hub_names()
    lines, failed = [], 0
    for role, var, model in model_roles(settings):
        if not model:
            continue
        folder = Path(model).expanduser()
        try:
            if folder.is_dir():
                why = folder_problem(folder)
                if why:
                    raise RuntimeError(f"{folder} is incomplete ({why})")
                where = folder
                if to is not None:
                    where = to / folder.name
                    if where.resolve() != folder.resolve():
                        shutil.copytree(folder, where, dirs_exist_ok=True)
            else:
                hub_id = names.get(model, model)
                from modelscope.hub.snapshot_download import snapshot_download

                where = Path(snapshot_download(
                    hub_id, local_dir=str(to / hub_id.split("/")[-1]) if to else None))
        except Exception as exc:  # noqa: BLE001  (unreachable hub, disk full, ...)
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            out(f"{role} model {model}: {type(exc).__name__}: {first}")
            failed += 1
            continue
        out(f"{role} model {model}: {where}")
        lines.append(f"{var}={where.resolve()}")
    if lines:
        out("\nuse them with (e.g. in the service's environment file):")
        for line in lines:
            out(line)
    return 1 if failed else 0
