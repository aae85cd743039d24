"""The public Python client (``tingji.client``), sync and async, against the real server
and worker: what its README section promises."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest

from tests.helpers.http import check_srt, check_vtt
from tests.helpers.stack import Stack
from tingji.client import AsyncClient, Client, ClientError, Task, WaitTimeout

TOKEN = "client-token"


def test_the_readme_example_and_the_rest_of_the_sync_client(
        stack_factory: Callable[..., Stack], media: dict[str, Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    stack = stack_factory(TINGJI_API_TOKEN=TOKEN)
    stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
    monkeypatch.setenv("TINGJI_URL", stack.server.url)
    monkeypatch.setenv("TINGJI_API_TOKEN", TOKEN)
    seen: list[tuple[str, str | None, float]] = []

    with Client.from_env() as tj:
        task = tj.submit_file(media["speech"], hotwords=["听记"], polish=False)
        assert task["status"] == "pending" and task["created"]
        # no worker yet: waiting runs out of time, the task goes on
        with pytest.raises(WaitTimeout) as late:
            tj.wait(task["task_id"], timeout=0.3, interval=0.1)
        assert late.value.task["status"] == "pending"
        stack.worker()
        done = tj.wait(task["task_id"], interval=0.1,
                       on_progress=lambda t: seen.append((t["status"], t["stage"],
                                                          t["progress"])))
        assert done["status"] == "completed" and done["result"]["hotwords"] == ["听记"]
        assert seen[-1][0] == "completed" and len(seen) >= 2
        order = ["fetch", "transcribe", "polish", "summarize", "export"]
        stages = [order.index(s) for _, s, _ in seen if s]
        assert stages == sorted(stages)  # each change seen as the pipeline goes on

        check_srt(tj.result(done["task_id"], "srt"))
        check_vtt(tj.result(done["task_id"], "vtt"))
        assert json.loads(tj.result(done["task_id"], "json"))["segments"]
        assert tj.result(done["task_id"]).strip() == done["result"]["text"].strip()
        names = zipfile.ZipFile(BytesIO(tj.download(done["task_id"]).content)).namelist()
        assert {n.rsplit(".", 1)[1] for n in names} == {"txt", "md", "json", "srt", "vtt",
                                                         "pdf"}

        # the same options again with an idempotency key name the same task
        again = tj.submit_file(media["speech"], idempotency_key="k1")
        same = tj.submit_file(media["speech"], idempotency_key="k1")
        assert same["task_id"] == again["task_id"] and not same["created"]
        assert tj.resolve(again["task_id"][:8]) == again["task_id"]
        page = tj.tasks(limit=1)
        assert page["total"] == 2 and len(page["tasks"]) == 1
        assert {t["task_id"] for t in tj.all_tasks()} == {done["task_id"], again["task_id"]}
        assert [e["event"] for e in tj.events(done["task_id"])][0] == "enqueued"
        final = tj.wait_all([done["task_id"], again["task_id"]], interval=0.1)
        assert [t["status"] for t in final] == ["completed", "completed"]

        # errors carry the API's message and code
        with pytest.raises(ClientError) as refused:
            tj.cancel(done["task_id"])
        assert refused.value.status == 409 and refused.value.code
        with pytest.raises(ClientError, match="no task id starts with"):
            tj.resolve("ffffffff")

    with Client(stack.server.url, "wrong") as intruder, \
            pytest.raises(ClientError, match="token") as denied:
        intruder.tasks()
    assert denied.value.status == 401
    with Client("http://127.0.0.1:9") as nowhere, pytest.raises(ClientError, match="tingji run"):
        nowhere.tasks()


async def test_the_async_client(stack_factory: Callable[..., Stack], media: dict[str, Path]
                                ) -> None:
    stack = stack_factory()
    stack.worker()
    seen: list[Task] = []

    async def note(t: Task) -> None:  # a coroutine callback is awaited
        seen.append(t)

    async with AsyncClient(stack.server.url) as tj:
        first = await tj.submit_file(media["speech"], polish=False)
        second = await tj.submit_file(media["speech"], speakers=2)
        done = await tj.wait_all([first["task_id"], second["task_id"]], interval=0.1,
                                 on_progress=note)
        assert [t["status"] for t in done] == ["completed", "completed"]
        assert {t["task_id"] for t in seen} == {first["task_id"], second["task_id"]}
        check_srt(await tj.result(first["task_id"], "srt"))
        labelled = json.loads(await tj.result(second["task_id"], "json"))["segments"]
        assert {s.get("speaker") for s in labelled} <= {"S1", "S2"}
        page = await tj.tasks(status="completed")
        assert page["total"] == 2
        with pytest.raises(ClientError) as refused:
            await tj.retry(first["task_id"])  # a completed task is not retried
        assert refused.value.status == 409
        # the live feed: hello first, with the last event id
        stream = tj.follow()
        kind, _, hello = await stream.__anext__()
        assert kind == "hello" and hello["last_event_id"] > 0
        await stream.aclose()
