"""The OpenAI audio API on the durable queue, driven by the real ``openai`` SDK against
the real server and worker."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from tests.helpers.http import check_srt, check_vtt
from tests.helpers.servers import LlmStub
from tests.helpers.stack import Stack

TOKEN = "openai-style-token"


def test_every_response_format_through_the_sdk(stack_factory: Callable[..., Stack],
                                               media: dict[str, Path], llm: LlmStub) -> None:
    stack = stack_factory(TINGJI_API_TOKEN=TOKEN, TINGJI_LLM_BASE_URL=llm.base_url,
                          TINGJI_LLM_MODEL="stub-chat")
    stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
    stack.worker()
    client = openai.OpenAI(base_url=f"{stack.server.url}/v1", api_key=TOKEN, max_retries=0)
    # a local folder by its name: its path is the server's business
    assert [m.id for m in client.models.list()] == [Path(stack.env["TINGJI_ASR_MODEL"]).name]

    def create(fmt: str, **kw: object) -> object:
        with open(media["speech"], "rb") as fh:
            return client.audio.transcriptions.create(file=fh, model="whisper-1",
                                                      response_format=fmt, **kw)  # type: ignore
    plain = create("json")
    assert plain.text.strip()  # type: ignore[attr-defined]
    text = create("text")
    assert isinstance(text, str) and text.strip() == plain.text.strip()  # type: ignore
    check_srt(create("srt"))  # type: ignore[arg-type]
    check_vtt(create("vtt"))  # type: ignore[arg-type]
    verbose = create("verbose_json", timestamp_granularities=["segment", "word"],
                     prompt="听记 转写")
    segs = verbose.segments  # type: ignore[attr-defined]
    assert segs and all(s.end >= s.start for s in segs) and verbose.duration > 0  # type: ignore
    assert verbose.words and verbose.words[0].end >= verbose.words[0].start  # type: ignore

    # ordinary durable tasks: listed, with their history; the prompt became hotwords
    tasks = stack.http.get("/api/v1/tasks").json()["tasks"]
    assert len(tasks) == 5 and all(t["status"] == "completed" for t in tasks)
    assert "completed" in [e["event"] for e in stack.events(tasks[0]["task_id"])]
    assert tasks[0]["result"]["hotwords"] == ["听记", "转写"]

    wrong = openai.OpenAI(base_url=f"{stack.server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied, \
            open(media["speech"], "rb") as fh:
        wrong.audio.transcriptions.create(file=fh, model="whisper-1")
    assert denied.value.status_code == 401
    assert denied.value.body["type"] == "invalid_request_error"  # type: ignore[index]
    assert "token" in denied.value.body["message"]  # type: ignore[index]
    # translations: the same durable task, translated sentence by sentence by the LLM
    with open(media["speech"], "rb") as fh:
        english = client.audio.translations.create(file=fh, model="whisper-1",
                                                   response_format="verbose_json")
    assert english.task == "translate" and english.language == "english"  # type: ignore
    assert english.segments and all(  # type: ignore[attr-defined]
        s.text.startswith("EN:") for s in english.segments)  # type: ignore[attr-defined]
    assert english.text == "\n".join(s.text for s in english.segments)  # type: ignore
    with open(media["speech"], "rb") as fh:
        srt = client.audio.translations.create(file=fh, model="whisper-1",
                                               response_format="srt")
    cues = check_srt(srt)  # type: ignore[arg-type]
    assert [c[2] for c in cues] == [s.text for s in english.segments]  # type: ignore
    assert all(c["kind"] != "polish" for c in llm.b.calls)  # transcriptions: not polished
    with pytest.raises(openai.BadRequestError), open(media["speech"], "rb") as fh:
        client.audio.transcriptions.create(file=fh, model="whisper-1",
                                           response_format="mp3")  # type: ignore[arg-type]


def test_a_short_wait_answers_202_and_the_task_goes_on(stack_factory: Callable[..., Stack],
                                                       media: dict[str, Path]) -> None:
    stack = stack_factory(TINGJI_SYNC_WAIT_SECONDS="0")
    client = openai.OpenAI(base_url=f"{stack.server.url}/v1", api_key="x", max_retries=0)
    with open(media["speech"], "rb") as fh:
        raw = client.audio.transcriptions.with_raw_response.create(file=fh, model="whisper-1")
    assert raw.status_code == 202
    doc = raw.http_response.json()
    tid = doc["task_id"]
    assert raw.headers["location"] == f"/api/v1/task/{tid}"
    assert doc["error"]["code"] == "task_pending" and tid in doc["error"]["message"]
    stack.worker()  # no worker was running: the task waited in the queue
    assert stack.finished(tid)["status"] == "completed"

    # a client that gives up (a 1 s timeout, a 10 s wait on the server): the task goes on
    slow = stack_factory(TINGJI_SYNC_WAIT_SECONDS="10")
    quick = openai.OpenAI(base_url=f"{slow.server.url}/v1", api_key="x", max_retries=0,
                          timeout=httpx.Timeout(1.0))
    # (no worker runs yet: the server's wait outlasts the client's whatever the clip)
    with pytest.raises(openai.APITimeoutError), open(media["speech"], "rb") as fh:
        quick.audio.transcriptions.create(file=fh, model="whisper-1")
    slow.wait(lambda: slow.http.get("/api/v1/tasks").json()["total"] == 1, 30, "no task")
    [task] = slow.http.get("/api/v1/tasks").json()["tasks"]
    slow.worker()
    assert slow.finished(task["task_id"], 180)["status"] == "completed"
