"""``tingji mcp`` driven by the official MCP SDK's client: the real executable over
stdio, talking to the real server and worker."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client as McpClient
from mcp.client.stdio import StdioServerParameters

from tests.helpers.http import check_srt
from tests.helpers.procs import TINGJI
from tests.helpers.servers import LlmStub
from tests.helpers.stack import Stack
from tingji.notes import clock

TOKEN = "mcp-token"


def _spawn(stack: Stack, token: str, roots: Path | None = None) -> StdioServerParameters:
    # only what tingji mcp needs: the SDK starts the server with a minimal environment
    return StdioServerParameters(command=TINGJI, args=["mcp"], env={
        "TINGJI_URL": stack.server.url, "TINGJI_API_TOKEN": token,
        "TINGJI_MCP_FILE_ROOTS": str(roots or stack.data)})


def _structured(result: Any) -> Any:
    assert not result.is_error, result.content
    doc = result.structured_content
    return doc.get("result", doc) if isinstance(doc, dict) and set(doc) == {"result"} else doc


async def test_an_agent_transcribes_a_local_clip(stack_factory: Callable[..., Stack],
                                                 media: dict[str, Path],
                                                 llm: LlmStub) -> None:
    stack = stack_factory(TINGJI_API_TOKEN=TOKEN, TINGJI_LLM_BASE_URL=llm.base_url,
                          TINGJI_LLM_MODEL="stub-chat")
    stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
    stack.worker()
    progress: list[tuple[float, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, message))

    async with McpClient(_spawn(stack, TOKEN, media["speech"].parent),
                         read_timeout_seconds=120) as agent:
        tools = {t.name for t in (await agent.list_tools()).tools}
        assert tools == {"transcribe_url", "transcribe_file", "task_status", "get_result",
                         "list_tasks", "cancel_task"}

        done = _structured(await agent.call_tool(
            "transcribe_file", {"path": str(media["speech"]), "hotwords": ["听记"],
                                "polish": False},
            progress_callback=on_progress))
        assert done["status"] == "completed" and done["text"].strip(), done
        assert done["duration_s"] > 1
        assert progress and progress[-1][0] == 100.0
        tid = done["task_id"]

        # the same durable task as any other: in the API's list, with its history
        task = stack.task(tid)
        assert task["status"] == "completed" and task["result"]["hotwords"] == ["听记"]
        assert "completed" in [e["event"] for e in stack.events(tid)]

        status = _structured(await agent.call_tool("task_status", {"task_id": tid[:8]}))
        assert status["task_id"] == tid and status["text"] == done["text"]
        listed = _structured(await agent.call_tool("list_tasks", {"status": "completed"}))
        assert [t["task_id"] for t in listed] == [tid] and "text" not in listed[0]

        got = await agent.call_tool("get_result", {"task_id": tid, "format": "json"})
        segments = json.loads(got.content[0].text)["segments"]  # type: ignore[union-attr]
        assert segments and segments[0]["end_ms"] >= segments[0]["start_ms"]

        # finished transcripts are resources
        uris = [str(r.uri) for r in (await agent.list_resources()).resources]
        assert f"tingji://task/{tid}/txt" in uris
        srt = await agent.read_resource(f"tingji://task/{tid}/srt")
        check_srt(srt.contents[0].text)  # type: ignore[union-attr]
        txt = await agent.read_resource(f"tingji://task/{tid}/txt")
        assert txt.contents[0].text.strip() == task["result"]["text"].strip()  # type: ignore

        # a task that cannot be cancelled, an unknown task, a missing file: tool errors
        # with the service's message, and the server goes on
        refused = await agent.call_tool("cancel_task", {"task_id": tid})
        assert refused.is_error and "completed" in refused.content[0].text  # type: ignore
        missing = await agent.call_tool("task_status", {"task_id": "ffffffff"})
        assert missing.is_error and "no task id starts with" in missing.content[0].text  # type: ignore
        # a missing file, one outside TINGJI_MCP_FILE_ROOTS (a key an injected prompt asks
        # for), and one inside that is not media: one answer, nothing uploaded
        before = len(stack.http.get("/api/v1/tasks").json()["tasks"])
        answers = set()
        for path in ("/nonexistent.wav", "/etc/hostname", str(media["text_mp3"]),
                     str(media["speech"].parent / ".." / "x.wav")):
            refused_file = await agent.call_tool("transcribe_file", {"path": path})
            text = refused_file.content[0].text  # type: ignore[union-attr]
            assert refused_file.is_error and "not an audio or video file" in text, text
            answers.add(text.replace(path, "PATH"))
        assert len(answers) == 1
        assert len(stack.http.get("/api/v1/tasks").json()["tasks"]) == before

        # wait_seconds=0: the id at once; the task goes on in the queue
        queued = _structured(await agent.call_tool(
            "transcribe_file", {"path": str(media["speech"]), "wait_seconds": 0,
                                "summarize": False, "polish": False}))
        assert queued["status"] in ("pending", "processing") and "later" in queued["note"]
        assert stack.finished(queued["task_id"])["status"] == "completed"

        # notes: chapters, mind map and a translation, fetched in their formats
        notes = _structured(await agent.call_tool("transcribe_file", {
            "path": str(media["speech"]), "polish": False, "chapters": True,
            "mindmap": True, "translate": "en"}))
        assert notes["status"] == "completed", notes
        nid = notes["task_id"]
        chapters = stack.task(nid)["result"]["chapters"]

        async def result(fmt: str, **more: str) -> str:
            got = await agent.call_tool("get_result", {"task_id": nid, "format": fmt,
                                                       **more})
            assert not got.is_error, got.content
            return got.content[0].text  # type: ignore[union-attr,no-any-return]
        assert (await result("chapters")).splitlines() == [
            f"{clock(c['start_ms'])} {c['title']}" for c in chapters]
        assert (await result("mindmap")).startswith("mindmap\n")
        english = check_srt(await result("srt", lang="en"))
        assert english and all(cue[2].startswith("EN:") for cue in english)
        bilingual = check_srt(await result("srt", lang="bilingual"))
        assert [c[:2] for c in bilingual] == [c[:2] for c in english]

    async with McpClient(_spawn(stack, "wrong-token"), read_timeout_seconds=60) as intruder:
        denied = await intruder.call_tool("list_tasks", {})
        assert denied.is_error and "token" in denied.content[0].text  # type: ignore


@pytest.mark.skipif(sys.platform != "linux", reason="stdio process handling")
async def test_without_a_service_the_tools_say_how_to_start_it(tmp_path: Path) -> None:
    params = StdioServerParameters(command=TINGJI, args=["mcp"], env={
        "TINGJI_URL": "http://127.0.0.1:9"})
    async with McpClient(params, read_timeout_seconds=30) as agent:
        got = await agent.call_tool("list_tasks", {})
        assert got.is_error and "tingji run" in got.content[0].text  # type: ignore[union-attr]


async def test_streamable_http_on_loopback(stack_factory: Callable[..., Stack],
                                           tmp_path: Path) -> None:
    import httpx
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from tests.helpers.procs import free_port, start

    stack = stack_factory()
    for host in ("127.0.0.1", "127.0.0.2"):  # the SDK checks nothing itself for .2
        port = free_port()
        proc = start(["mcp", "--http", "--host", host, "--port", str(port)],
                     {**stack.env, "TINGJI_URL": stack.server.url,
                      "TINGJI_MCP_TOKEN": "mcp-http-token"}, tmp_path / f"mcp-{host}.log")
        url = f"http://{host}:{port}/mcp"
        try:
            stack.wait(lambda: _listening(port, host), 30,  # noqa: B023
                       f"tingji mcp --http:\n{proc.output()}")
            authorized = httpx2.AsyncClient(headers={"Authorization": "Bearer mcp-http-token"})
            async with McpClient(streamable_http_client(url, http_client=authorized),
                                 read_timeout_seconds=30) as agent:
                assert _structured(await agent.call_tool("list_tasks", {})) == []
            # any other local process (or page) without the token gets nothing
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                denied = httpx.post(url, headers=headers, json={})
                assert denied.status_code == 401, denied.text
            # a page on another site that rebinds its DNS name to loopback gets nothing
            rebound = httpx.post(url, json={}, headers={
                "Host": f"evil.example:{port}", "Authorization": "Bearer mcp-http-token"})
            assert rebound.status_code in (403, 421), rebound.text
        finally:
            proc.kill()
    # without TINGJI_MCP_TOKEN a token is made and printed for the user
    port = free_port()
    made = start(["mcp", "--http", "--port", str(port)],
                 {**stack.env, "TINGJI_URL": stack.server.url}, tmp_path / "made.log")
    try:
        # the token is printed before the server listens: wait for both
        stack.wait(lambda: "Authorization: Bearer " in made.output() and _listening(port),
                   30, made.output())
        assert httpx.post(f"http://127.0.0.1:{port}/mcp", json={}).status_code == 401
    finally:
        made.kill()
    refused = start(["mcp", "--http", "--host", "0.0.0.0"], stack.env, tmp_path / "pub.log")
    assert refused.popen.wait(30) != 0 and "loopback only" in refused.output()


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0
