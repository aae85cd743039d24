"""A small HTTP client for the tingji API, used by the command line.

Errors come back as ``ClientError`` with the API's own message; a service that is
not running is one clear line that says how to start it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx


class ClientError(Exception):
    def __init__(self, message: str, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout: float = 30.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers=headers,
                                 timeout=httpx.Timeout(timeout, connect=3.0))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.ConnectError:
            raise ClientError(
                f"cannot reach the tingji service at {self.base_url}; start it with "
                "`tingji run` (or scripts/start.sh), or set TINGJI_URL") from None
        except httpx.TimeoutException:
            raise ClientError(f"the tingji service at {self.base_url} did not answer in "
                              "time") from None
        if resp.status_code >= 400:
            try:
                err = resp.json()["error"]
                raise ClientError(err["message"], resp.status_code, err["code"])
            except (ValueError, KeyError, TypeError):
                raise ClientError(f"HTTP {resp.status_code} from {self.base_url}{path}",
                                  resp.status_code) from None
        return resp

    def follow(self, since: int | None = None) -> Iterator[tuple[str, int | None, Any]]:
        """The live feed (``GET /api/v1/events``): (event, id, data) as they come; the
        first is ``hello`` with the last event id.  Ends when the stream does."""
        params = {"since": since} if since is not None else {}
        try:
            with self.http.stream("GET", "/api/v1/events", params=params,
                                  timeout=httpx.Timeout(60.0, connect=3.0)) as resp:
                if resp.status_code >= 400:
                    resp.read()
                    raise ClientError(f"HTTP {resp.status_code} from the event stream",
                                      resp.status_code)
                event, eid, data = "message", None, []
                for line in resp.iter_lines():
                    if not line:
                        # Litestar sends a keep-alive comment with an empty data line:
                        # a message without data is not an event
                        if "".join(data):
                            yield event, eid, json.loads("\n".join(data))
                        event, eid, data = "message", None, []
                    elif line.startswith("event:"):
                        event = line[6:].strip()
                    elif line.startswith("id:"):
                        eid = int(line[3:].strip())
                    elif line.startswith("data:"):
                        data.append(line[5:].strip())
        except httpx.ConnectError:
            raise ClientError(f"cannot reach the tingji service at {self.base_url}") from None

    def get(self, path: str, **params: Any) -> Any:
        clean = {k: v for k, v in params.items() if v is not None}
        return self.request("GET", path, params=clean).json()

    # ------------------------------------------------------------------ tasks
    def submit_url(self, url: str, options: dict[str, Any],
                   batch_id: str | None = None) -> dict[str, Any]:
        body = {"video_url": url, **options}
        if batch_id:
            body["batch_id"] = batch_id
        return self.request("POST", "/api/v1/process/bilibili",  # type: ignore[no-any-return]
                            json=body).json()

    def submit_file(self, path: Path, options: dict[str, Any],
                    batch_id: str | None = None) -> dict[str, Any]:
        fields = {k: _form(v) for k, v in options.items() if v is not None}
        if batch_id:
            fields["batch_id"] = batch_id
        with open(path, "rb") as fh:  # streamed by httpx, never read whole
            return self.request("POST", "/api/v1/process/audio",  # type: ignore[no-any-return]
                                files={"file": (path.name, fh)}, data=fields).json()

    def submit_batch(self, urls: list[str], options: dict[str, Any]) -> dict[str, Any]:
        return self.request("POST", "/api/v1/process/batch",  # type: ignore[no-any-return]
                            json={"urls": urls, **options}).json()

    def task(self, task_id: str) -> dict[str, Any]:
        return self.get(f"/api/v1/task/{task_id}")  # type: ignore[no-any-return]

    def events(self, task_id: str) -> list[dict[str, Any]]:
        return self.get(f"/api/v1/task/{task_id}/events")  # type: ignore[no-any-return]

    def tasks(self, **params: Any) -> dict[str, Any]:
        return self.get("/api/v1/tasks", **params)  # type: ignore[no-any-return]

    def all_tasks(self, **params: Any) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        while True:
            page = self.tasks(limit=500, offset=len(out), **params)
            out += page["tasks"]
            if not page["tasks"] or len(out) >= page["total"]:
                return out

    def resolve(self, short: str) -> str:
        """A full task id from a full or short (prefix) id; ambiguous -> error."""
        s = short.strip().lower()
        try:
            return str(uuid.UUID(s))
        except ValueError:
            pass
        if len(s) < 4:
            raise ClientError(f"{short!r}: give at least 4 characters of a task id")
        page = self.tasks(id_prefix=s, limit=5)
        ids = [t["task_id"] for t in page["tasks"]]
        if not ids:
            raise ClientError(f"no task id starts with {short!r}")
        if page["total"] > 1:
            raise ClientError(f"{short!r} is ambiguous: it starts "
                              f"{page['total']} task ids ({', '.join(i[:13] for i in ids)}…)")
        return str(ids[0])

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/task/{task_id}/cancel").json()  # type: ignore

    def retry(self, task_id: str) -> dict[str, Any]:
        return self.request("POST", f"/api/v1/task/{task_id}/retry").json()  # type: ignore

    def download(self, task_id: str, fmt: str | None) -> httpx.Response:
        params = {"format": fmt} if fmt else {}
        return self.request("GET", f"/api/v1/download/{task_id}", params=params)


def _form(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):  # hotwords: the form field separates them with commas
        return ",".join(str(v) for v in value)
    return str(value)
