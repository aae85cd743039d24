"""Where each configured model would come from, decided in seconds without importing
funasr or torch: a local folder (complete or not), a hub id already in ModelScope's
cache, or a download.  The worker asks before it loads, so that a machine without
network hears at once which models it needs and which variables point at folders
(funasr alone retries the hub for about 90 s, then names one model); ``tingji doctor``
reports the same answers."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

MODELSCOPE_API = "https://www.modelscope.cn/api/v1/models/{id}"
# how long the worker waits for the hub before it says what it needs (the doctor waits 5 s)
HUB_PROBE_S = 4.0
DOWNLOAD_HINT = ("on a machine with network, `tingji models download --to DIR`; carry DIR "
                 "here and set the TINGJI_*_MODEL lines it prints")


@dataclass(frozen=True, slots=True)
class Source:
    """Where one model comes from.  ``kind``: ``folder`` (complete), ``incomplete``
    (``detail`` says what is missing), ``missing`` (a path that is no folder),
    ``cached`` (a hub id in the cache at ``detail``) or ``hub`` (to be downloaded)."""

    role: str
    setting: str
    model: str
    kind: str
    detail: str = ""
    hub_id: str = ""


def hub_names() -> dict[str, str]:
    """funasr's short names (paraformer-zh, ...) -> ModelScope ids, read without
    importing funasr (which imports torch)."""
    spec = importlib.util.find_spec("funasr")
    if spec is None or not spec.submodule_search_locations:
        return {}
    path = Path(next(iter(spec.submodule_search_locations))) / "download" / \
        "name_maps_from_hub.py"
    namespace: dict[str, Any] = {}
    try:
        exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # noqa: S102
    except OSError:
        return {}
    return dict(namespace.get("name_maps_ms", {}))


def folder_problem(folder: Path) -> str | None:
    """Why a funasr model folder is incomplete, or None."""
    meta = folder / "configuration.json"
    needed: list[str] = []
    if meta.is_file():
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError:
            return "configuration.json is not JSON"

        def leaves(v: Any) -> Iterator[str]:
            if isinstance(v, dict):
                for x in v.values():
                    yield from leaves(x)
            elif isinstance(v, str):
                yield v
        needed = list(leaves(doc.get("file_path_metas", {})))
    needed = needed or ["config.yaml", "model.pt"]
    missing = [n for n in needed if not (folder / n).is_file() or
               (folder / n).stat().st_size == 0]
    return f"missing or empty: {', '.join(missing)}" if missing else None


def cached(hub_id: str) -> str | None:
    """The hub model's folder in ModelScope's cache, or None."""
    try:
        from modelscope.hub.snapshot_download import snapshot_download
    except ImportError:
        return None
    try:
        return str(snapshot_download(hub_id, local_files_only=True))
    except Exception:  # noqa: BLE001  (any failure means: not in the cache)
        return None


def hub_reachable(hub_id: str, timeout: float = 5.0) -> bool:
    try:
        return httpx.get(MODELSCOPE_API.format(id=hub_id), timeout=timeout).status_code < 500
    except httpx.HTTPError:
        return False


def locate(role: str, setting: str, model: str, names: dict[str, str] | None = None
           ) -> Source:
    folder = Path(model).expanduser()
    if folder.is_dir():
        why = folder_problem(folder)
        return Source(role, setting, model, "incomplete" if why else "folder", why or "")
    if model.startswith(("/", ".", "~")) or folder.exists():
        return Source(role, setting, model, "missing", "no such folder")
    hub_id = (names if names is not None else hub_names()).get(model, model)
    where = cached(hub_id)
    return Source(role, setting, model, "cached" if where else "hub", where or "", hub_id)


def unavailable(roles: Sequence[tuple[str, str, str | None]], *,
                probe_s: float = HUB_PROBE_S) -> str | None:
    """Why these models cannot be loaded here, in one message that names every one and
    its variable -- or None when each is a complete folder, cached, or the hub answers
    (one probe, ``probe_s`` at most)."""
    names = hub_names()
    sources = [locate(role, setting, model, names) for role, setting, model in roles if model]
    bad = [s for s in sources if s.kind in ("incomplete", "missing")]
    fetch = [s for s in sources if s.kind == "hub"]
    if fetch and hub_reachable(fetch[0].hub_id, probe_s):
        fetch = []
    if not bad and not fetch:
        return None
    parts = [f"{s.role} model {s.model} ({s.setting}): {s.detail}" for s in bad]
    if fetch:
        listed = ", ".join(f"{s.model} ({s.setting})" for s in fetch)
        parts.append(f"{listed} must be downloaded from ModelScope, which cannot be "
                     f"reached from here")
    settings = ", ".join(s.setting for s in sources)
    return ("; ".join(parts) + f". Point {settings} at complete local model folders ("
            f"{DOWNLOAD_HINT}); TINGJI_SPK_MODEL likewise for speaker labels")
