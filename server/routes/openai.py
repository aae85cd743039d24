"""The OpenAI audio API on the durable queue: ``POST /v1/audio/transcriptions`` (what
Open WebUI, Dify, n8n and the ``openai`` SDK call), ``POST /v1/audio/translations``
(into English, as OpenAI's: the transcript translated sentence by sentence by the
configured LLM, ``translate: "en"``) and ``GET /v1/models``.

A transcription is an ordinary upload task (same table, same history, ``tingji list``,
the web page).  The request is held open up to ``TINGJI_SYNC_WAIT_SECONDS`` while the
worker runs it; the wait polls the database with short reads (no connection is held,
the event loop is never blocked) and ends early if the client goes away.  When the time
is up, or the client left, the task simply goes on: the answer is then a 202 with the
task id and a ``Location`` to poll, in OpenAI's error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from pathlib import PurePath
from typing import Any

from litestar import Request, Response, get, post
from litestar.status_codes import HTTP_202_ACCEPTED, HTTP_400_BAD_REQUEST

from db.models import TaskStatus
from server.deps import GateDep, QueueDep, ReadsDep, SettingsDep
from server.errors import ApiError, bad_request, body
from server.routes.process import enqueue_upload, idempotency_key
from server.uploads import accept_upload
from tingji.formats import render_srt, render_vtt, speaker_label, srt_blocks, vtt_blocks
from tingji.hotwords import MAX_HOTWORD_CHARS, MAX_HOTWORDS, split_hotwords
from tingji.notes import sentence_cues

FIELDS = frozenset({"model", "language", "prompt", "response_format", "temperature",
                    "timestamp_granularities[]", "timestamp_granularities", "stream",
                    "include[]"})
FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
POLL_S = (0.2, 1.0)  # first and longest wait between looks at the task


def _hotwords(prompt: str) -> list[str]:
    """OpenAI's ``prompt`` (words the model should expect) as hotwords: its words that
    fit, at most 100."""
    words = [w for w in split_hotwords(prompt) if len(w) <= MAX_HOTWORD_CHARS]
    return list(dict.fromkeys(words))[:MAX_HOTWORDS]


@post("/audio/transcriptions", summary="OpenAI-compatible transcription (durable)",
      request_max_body_size=None, opt={"body": "multipart"}, status_code=200)
async def transcriptions(request: Request[Any, Any, Any], queue: QueueDep, reads: ReadsDep,
                         settings: SettingsDep, uploads_gate: GateDep) -> Response[Any]:
    return await _audio(request, queue, reads, settings, uploads_gate, translate=False)


@post("/audio/translations", summary="OpenAI-compatible translation into English (durable)",
      request_max_body_size=None, opt={"body": "multipart"}, status_code=200)
async def translations(request: Request[Any, Any, Any], queue: QueueDep, reads: ReadsDep,
                       settings: SettingsDep, uploads_gate: GateDep) -> Response[Any]:
    """The transcript translated into English by the configured LLM (an upload task with
    ``translate: "en"``); without an LLM it is refused before the upload is kept."""
    if not settings.llm_configured:
        raise bad_request("translations are written by an LLM and none is configured on "
                          "this server (TINGJI_LLM_BASE_URL); /v1/audio/transcriptions "
                          "gives the Chinese text", code="unsupported")
    return await _audio(request, queue, reads, settings, uploads_gate, translate=True)


async def _audio(request: Request[Any, Any, Any], queue: QueueDep, reads: ReadsDep,
                 settings: SettingsDep, uploads_gate: GateDep, *, translate: bool
                 ) -> Response[Any]:
    key = idempotency_key(request, None)
    upload = await accept_upload(request, settings, reads, uploads_gate, FIELDS)
    try:
        f = {k.removesuffix("[]"): v.strip() for k, v in upload.fields.items()}
        if f.get("stream", "false").lower() in ("1", "true"):
            raise bad_request("stream: tingji answers when the transcript is complete; "
                              "send stream=false")
        fmt = f.get("response_format") or "json"
        if fmt not in FORMATS:
            raise bad_request(f"response_format: one of {', '.join(FORMATS)}, not {fmt[:20]!r}")
        model = f.get("model") or public_model_id(settings.asr_model)
        if len(model) > 200:
            raise bad_request("model: at most 200 characters")
        options: dict[str, Any] = {"polish": False, "summarize": False}
        if translate:
            options["translate"] = "en"
        hotwords = _hotwords(f.get("prompt", ""))
        if hotwords:
            options["hotwords"] = hotwords
        openai = {"model": model, "language": f.get("language") or None,
                  "response_format": fmt, "prompt": f.get("prompt") or None,
                  "timestamp_granularities": f.get("timestamp_granularities") or None}
    except BaseException:
        upload.path.unlink(missing_ok=True)
        raise
    enq = await enqueue_upload(queue, upload, options, key=key, openai=openai)
    waited = _WAITING[0] < settings.max_sync_waiters
    if waited:
        _WAITING[0] += 1
        try:
            task = await _wait(request, reads, enq.task.id, settings.sync_wait_seconds)
        finally:
            _WAITING[0] -= 1
    else:  # enough connections are held open already: the task id at once
        task = await reads.task(enq.task.id)
    headers = {"X-Tingji-Task-Id": enq.task.id}
    if task is None or task.status in (TaskStatus.PENDING, TaskStatus.PROCESSING):
        why = (f"still transcribing after {settings.sync_wait_seconds:.0f} s "
               "(TINGJI_SYNC_WAIT_SECONDS)" if waited else
               f"{settings.max_sync_waiters} requests are waiting already "
               "(TINGJI_MAX_SYNC_WAITERS)")
        doc = body("task_pending", f"{why}; the task goes on: poll "
                   f"/api/v1/task/{enq.task.id}", HTTP_202_ACCEPTED)
        doc["task_id"] = enq.task.id
        return Response(doc, status_code=HTTP_202_ACCEPTED,
                        headers={**headers, "Location": f"/api/v1/task/{enq.task.id}"})
    if task.status != TaskStatus.COMPLETED:
        err = task.error or {}
        status = HTTP_400_BAD_REQUEST if err and not err.get("retryable", True) else 500
        raise ApiError(status, "transcription_failed",
                       f"task {task.id} {task.status}: {err.get('message') or task.status}")
    return _answer(fmt, task, await reads.segments(task.id), headers, openai)


_WAITING = [0]  # requests of this process waiting for their task (TINGJI_MAX_SYNC_WAITERS)


async def _wait(request: Request[Any, Any, Any], reads: ReadsDep, task_id: str,
                seconds: float) -> Any:
    """The task once it has finished, or its last state when the time is up or the
    client went away."""
    gone = asyncio.Event()

    async def watch() -> None:  # the body is read: the next message is the disconnect
        with contextlib.suppress(Exception):
            while (await request.receive())["type"] != "http.disconnect":
                pass
        gone.set()
    watcher = asyncio.create_task(watch())
    deadline, pause, task = time.monotonic() + seconds, POLL_S[0], None
    try:
        while True:
            task = await reads.task(task_id)
            if task is None or task.status not in (TaskStatus.PENDING, TaskStatus.PROCESSING):
                return task
            left = deadline - time.monotonic()
            if left <= 0 or gone.is_set():
                return task
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gone.wait(), min(pause, left))
            pause = min(POLL_S[1], pause * 1.5)
    finally:
        watcher.cancel()


def _answer(fmt: str, task: Any, segments: list[Any], headers: dict[str, str],
            openai: dict[str, Any]) -> Response[Any]:
    result = task.result or {}
    names = result.get("speaker_names") or {}
    text = str(result.get("text") or "")
    translation = result.get("translation")
    if translation:  # a translation task answers in English, a cue a sentence
        text = str(translation.get("text") or "")
        lines = list(translation.get("sentences") or [])
        segments = [replace(s, text=lines[i] if i < len(lines) else "", chars=None)
                    for i, s in enumerate(segments)]
        cues = sentence_cues(segments, translation, bilingual=False)
        if fmt in ("srt", "vtt"):
            return Response(srt_blocks(cues) if fmt == "srt" else vtt_blocks(cues),
                            media_type="text/plain; charset=utf-8" if fmt == "srt"
                            else "text/vtt; charset=utf-8", headers=headers)
    if fmt == "text":
        return Response(text + "\n", media_type="text/plain; charset=utf-8", headers=headers)
    if fmt == "srt":
        return Response(render_srt(segments, names), media_type="text/plain; charset=utf-8",
                        headers=headers)
    if fmt == "vtt":
        return Response(render_vtt(segments, names), media_type="text/vtt; charset=utf-8",
                        headers=headers)
    if fmt == "json":
        return Response({"text": text}, headers=headers)
    doc: dict[str, Any] = {
        "task": "translate" if translation else "transcribe",
        "language": "english" if translation else openai.get("language") or "chinese",
        "duration": result.get("duration_s"), "text": text,
        "segments": [{"id": i, "seek": 0, "start": s.start_ms / 1000, "end": s.end_ms / 1000,
                      "text": s.text, "tokens": [], "temperature": 0.0, "avg_logprob": 0.0,
                      "compression_ratio": 0.0, "no_speech_prob": 0.0,
                      **({"speaker": speaker_label(s, names)} if s.speaker is not None
                         else {})}
                     for i, s in enumerate(segments)],
    }
    if "word" in (openai.get("timestamp_granularities") or ""):
        # Chinese has no spaces: a "word" is a timed character (a token of the model)
        doc["words"] = [{"word": ch, "start": a / 1000, "end": b / 1000}
                        for s in segments for ch, (a, b) in zip(
                            [c for c in s.text if c.strip() and c not in PUNCT],
                            s.chars or [], strict=False)]
    return Response(doc, headers=headers)


PUNCT = set("，。！？、；：,.!?;:…“”‘’\"'（）()《》【】")


def public_model_id(model: str) -> str:
    """The ASR model as clients see it: a hub id as it is, a local folder by its name
    only (its path tells a client about the server's disk, and helps no one)."""
    if model.startswith(("/", "~", ".")):
        return PurePath(model).name or model
    return model


@get("/models", summary="Models (OpenAI-compatible)")
async def models(settings: SettingsDep) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": public_model_id(settings.asr_model),
                                        "object": "model", "created": 0, "owned_by": "tingji"}]}


handlers = [transcriptions, models, translations]
