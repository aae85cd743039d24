"""Workers on other machines: an upload stored by the API reaches whichever worker claims
its task, and nothing the API serves is read from a worker's disk."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.helpers.procs import start
from tests.helpers.stack import Stack
from worker.errors import PermanentTaskError, RetryableTaskError
from worker.fetch import fetch_remote_upload

TOKEN = "scale-out-token"


def remote_worker_env(stack: Stack, data: Path, **extra: str) -> dict[str, str]:
    """A worker with its own data folder (another machine's disk), on the same queue."""
    return {**stack.env, "TINGJI_DATA_DIR": str(data),
            "TINGJI_DATABASE_URL": f"sqlite:///{stack.data / 'tingji.db'}",
            "TINGJI_API_URL": stack.server.url, **extra}


def test_a_worker_elsewhere_fetches_the_upload(stack_factory: Callable[..., Stack],
                                               media: dict[str, Path], tmp_path: Path) -> None:
    stack = stack_factory(TINGJI_API_TOKEN=TOKEN)
    stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
    elsewhere = tmp_path / "other-host"
    worker = start(["worker", "--preload"], remote_worker_env(stack, elsewhere),
                   tmp_path / "remote-worker.log")
    stack.workers.append(worker)
    tid = stack.upload(media["speech"])
    stored = list((stack.data / "uploads").iterdir())
    assert len(stored) == 1
    done = stack.finished(tid)
    assert done["status"] == "completed", done
    assert "fetched upload of task" in worker.output()
    # the API dropped its copy when told; the worker's fetched copy went with its work files
    stack.wait(lambda: not stored[0].exists(), 10, "the API kept the completed upload")
    assert not (elsewhere / "work" / tid).exists()
    assert not any((elsewhere / "uploads").iterdir())
    # results come from the database, not from the worker's disk
    worker.stop()
    shutil.rmtree(elsewhere)
    for fmt in ("txt", "srt", "json"):
        got = stack.http.get(f"/api/v1/download/{tid}", params={"format": fmt})
        assert got.status_code == 200 and got.text.strip(), fmt
    assert stack.http.get(f"/api/v1/download/{tid}").status_code == 200  # the zip

    # the internal route: a completed task's upload is not served; a URL task has none
    assert stack.http.get(f"/api/v1/internal/upload/{tid}").status_code == 409
    assert httpx.get(f"{stack.server.url}/api/v1/internal/upload/{tid}").status_code == 401


async def test_what_can_go_wrong_fetching_an_upload(stack_factory: Callable[..., Stack],
                                                    media: dict[str, Path],
                                                    tmp_path: Path) -> None:
    stack = stack_factory(TINGJI_API_TOKEN=TOKEN)
    stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
    tid = stack.upload(media["speech"])  # no worker: it stays pending
    up = stack.task(tid)
    data = media["speech"].read_bytes()
    meta = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    url = stack.server.url
    dest = tmp_path / "upload"

    got = await fetch_remote_upload(url, TOKEN, tid, meta, dest)
    assert got.read_bytes() == data and up["status"] == "pending"
    with pytest.raises(RetryableTaskError, match="refused the upload: missing or wrong"):
        await fetch_remote_upload(url, "wrong", tid, meta, dest)
    with pytest.raises(RetryableTaskError, match="does not match what was uploaded"):
        await fetch_remote_upload(url, TOKEN, tid, {**meta, "sha256": "0" * 64}, dest)
    assert not dest.exists()  # a bad copy is not kept
    with pytest.raises(RetryableTaskError, match="cannot fetch the upload") as down:
        await fetch_remote_upload("http://127.0.0.1:9", TOKEN, tid, meta, dest)
    assert down.value.type == "ApiUnreachable"
    with pytest.raises(RetryableTaskError, match="needs TINGJI_API_TOKEN"):
        await fetch_remote_upload("http://10.255.255.1:8000", None, tid, meta, dest)
    for stored in (stack.data / "uploads").iterdir():
        stored.unlink()
    with pytest.raises(PermanentTaskError, match="gone") as gone:
        await fetch_remote_upload(url, TOKEN, tid, meta, dest)
    assert gone.value.type == "MissingUpload"
