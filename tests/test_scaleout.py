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
from worker.stages.fetch import fetch_remote_upload

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
    stack.work_files_removed(tid, elsewhere, upload=True)
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


@pytest.mark.slow
def test_two_hosts_share_the_queue_and_its_uploads(stack_factory: Callable[..., Stack],
                                                   media: dict[str, Path], tmp_path: Path,
                                                   pg_migrated: str) -> None:
    """Two machines (network namespaces with their own host names and disks) work one
    PostgreSQL queue with the API on this one: URL tasks and uploads complete exactly
    once; when one host's worker is SIGKILLed mid-task the other finishes it."""
    import signal
    import subprocess
    import time

    from tests.conftest import truncate_pg
    from tests.helpers import netns
    from tests.helpers.procs import TINGJI, Proc
    from tests.helpers.servers import FileServer

    why = netns.unavailable()
    if why:
        pytest.skip(why)
    truncate_pg(pg_migrated)
    files = FileServer(media["speech"].parent)
    # the workers reach the API by a name it must know (as a reverse proxy's would be)
    stack = stack_factory(TINGJI_API_TOKEN=TOKEN, TINGJI_DATABASE_URL=pg_migrated,
                          TINGJI_ALLOWED_HOSTS="api.tingji.test")
    stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
    api_port, media_port = (int(u.rsplit(":", 1)[1]) for u in (stack.server.url, files.url))
    workers: dict[str, Proc] = {}
    with netns.hosts(2, [5432, api_port, media_port]) as machines:
        try:
            for host in machines:
                env = {**stack.env, "TINGJI_DATA_DIR": str(tmp_path / host.name),
                       "TINGJI_DATABASE_URL": "postgresql://postgres@db.tingji.test:5432/"
                                              + pg_migrated.rsplit("/", 1)[1],
                       "TINGJI_API_URL": f"http://api.tingji.test:{api_port}",
                       "TINGJI_API_TOKEN": TOKEN}
                log = tmp_path / f"{host.name}.log"
                with open(log, "ab") as fh:
                    popen = subprocess.Popen(host.command([TINGJI, "worker", "--preload"]),
                                             env=env, stdout=fh, stderr=subprocess.STDOUT)
                workers[host.name] = Proc(popen, log, env=env)

            def hosts_by_worker() -> dict[str, str]:
                return {w["id"]: w["hostname"] for w in
                        stack.http.get("/api/v1/queue").json()["workers"]
                        if w["model_loads"] == 1}
            stack.wait(lambda: set(hosts_by_worker().values()) == set(workers), 120,
                       "both hosts' workers did not come up:\n" + "\n".join(
                           w.output()[-2000:] for w in workers.values()))

            tids = [stack.submit_url(f"http://media.tingji.test:{media_port}/speech.wav")
                    for _ in range(3)] + [stack.upload(media["speech"]) for _ in range(3)]
            by_host = hosts_by_worker()
            done_on = []
            for tid in tids:
                assert stack.finished(tid)["status"] == "completed", stack.task(tid)
                events = stack.events(tid)
                completed = [e for e in events if e["event"] == "completed"]
                assert len(completed) == 1 and sum(e["event"] == "claimed" for e in events) == 1
                done_on.append(by_host[completed[0]["worker_id"]])
            assert set(done_on) == set(workers), done_on  # both machines did work
            # each upload dropped when its task is done (the worker tells the API just after)
            stack.wait(lambda: not any((stack.data / "uploads").iterdir()), 10,
                       "the API kept completed uploads")

            # one host dies mid-transcription: the other takes the task after the lease
            tid = stack.upload(media["long"])
            [first] = stack.wait(lambda: [e["worker_id"] for e in stack.events(tid)
                                          if e["event"] == "claimed"], 120, "never claimed")
            victim = by_host[first]
            stack.pause_when(workers[victim], lambda: stack.task(tid)["stage"] == "transcribe",
                             120, "the long upload never reached transcription")
            workers[victim].popen.send_signal(signal.SIGKILL)
            killed_at = time.time()
            workers[victim].popen.wait()
            done = stack.finished(tid, timeout=180)
            assert done["status"] == "completed", done
            claims = [e for e in stack.events(tid) if e["event"] == "claimed"]
            assert [by_host[c["worker_id"]] for c in claims] == \
                [victim, next(h for h in workers if h != victim)]
            from datetime import datetime

            taken = datetime.fromisoformat(claims[1]["at"]).timestamp() - killed_at
            print(f"\nkill -> the other host's claim: {taken:.1f} s (lease "
                  f"{stack.env['TINGJI_LEASE_SECONDS']} s)")
            assert sum(e["event"] == "completed" for e in stack.events(tid)) == 1
        finally:  # inside the hosts: their connections close before the links go
            for w in workers.values():
                w.kill()
            files.close()
