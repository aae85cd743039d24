"""One task's stages, each checkpointed before the next starts:

    fetch -> transcribe -> polish -> summarize -> chapters -> mindmap -> translate
          -> export -> complete

(the LLM stages, ``worker.llm_stages``, only where the task asks for them)

A retried or recovered task resumes at its first unfinished stage: a finished
download is never fetched again and a finished transcript never re-transcribed
(segments are rows in ``segments``).  Only ``db.queue`` writes the task's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from db.models import EventType, Stage, Task, TaskKind
from db.reads import Checkpoint
from db.values import NewTask, Partial, SegmentRow
from tingji.formats import labelled_text
from tingji.hotwords import merged
from tingji.logs import bind
from tingji.results import TaskResult
from tingji.taskfiles import TaskFiles
from worker.asr import transcript_of
from worker.batching import AsrJob, Resume
from worker.checkpoints import PieceWriter
from worker.context import AsrLane, Phase, RunContext, StopReason
from worker.errors import PermanentTaskError, RetryableTaskError, TaskCancelled
from worker.export import export
from worker.llm_stages import write_notes
from worker.reuse import audio_sha256, transcript_key
from worker.stages.fetch import (
    fetch_remote_upload,
    fetch_upload,
    fetch_url,
    list_url,
    release_remote_upload,
)

log = logging.getLogger("tingji.worker.pipeline")


@dataclass
class TaskRun:
    """A claimed task while this worker holds it."""

    task: Task
    ctx: RunContext
    stop_event: threading.Event = field(default_factory=threading.Event)
    stop_reason: StopReason | None = None
    stage: Stage | None = None
    progress: float = 0.0
    message: str | None = None
    phase: Phase = Phase.FETCHING
    remote_upload: bool = False  # fetched from the API that stored it (another machine)
    inner: asyncio.Task[dict[str, Any]] | None = None

    @property
    def id(self) -> str:
        return self.task.id

    def stop(self, reason: StopReason) -> None:
        """Ask the run to stop now.  Its coroutine is cancelled at once; an ASR batch in
        progress on the model thread sees the event and stops at the batch's end."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_event.set()
        if self.inner is not None and not self.inner.done():
            self.inner.cancel()

    # ------------------------------------------------------------------ helpers
    @property
    def files(self) -> TaskFiles:
        return TaskFiles.of(self.ctx.settings.data_dir, self.id, self.task.payload)

    @property
    def work_dir(self) -> Path:
        return self.files.work

    def _rel(self, path: Path) -> str:
        return str(path.relative_to(self.ctx.settings.data_dir))

    def _abs(self, rel: str) -> Path:
        return self.ctx.settings.data_dir / rel

    def timeout_for(self, duration_s: float) -> float:
        s = self.ctx.settings
        return s.task_timeout_base_s + s.task_timeout_factor * duration_s

    async def _begin(self, stage: Stage, progress: float = 0.0) -> float:
        """Record that ``stage`` starts, ``progress`` of it done by an earlier run (a
        requested cancel stops the run here); returns the start time for ``_finish``."""
        if self.stop_event.is_set():
            raise TaskCancelled()
        self.stage, self.progress, self.message = stage, progress, None
        if await asyncio.shield(self.ctx.queue.stage_started(self.id, self.ctx.worker_id,
                                                             stage, progress=progress)):
            self.stop(StopReason.CANCEL)
            raise TaskCancelled()
        return time.perf_counter()

    async def _finish(self, stage: Stage, output: dict[str, Any], started: float, *,
                      title: str | None = None, segments: list[SegmentRow] | None = None,
                      transcript_key: str | None = None) -> float:
        """Checkpoint a finished stage; returns its seconds."""
        seconds = time.perf_counter() - started
        # Shielded: a cancel arriving now must not cut a checkpoint's transaction short.
        await asyncio.shield(self.ctx.queue.checkpoint(
            self.id, self.ctx.worker_id, stage, output, seconds=seconds, segments=segments,
            title=output.get("title") if stage == Stage.FETCH else title,
            transcript_key=transcript_key))
        self.progress = 1.0
        return seconds

    def _timed_out(self, stage: Stage, timeout: float | None) -> RetryableTaskError:
        self.stop_reason = self.stop_reason or StopReason.TIMEOUT
        self.stop_event.set()  # an ASR batch in progress stops at its end
        return RetryableTaskError(f"the {stage.value} stage timed out after "
                                  f"{timeout or 0:.0f} s", type="Timeout")

    async def _stage(self, stage: Stage, body: Callable[[], Awaitable[dict[str, Any]]], *,
                     timeout: float | None = None) -> tuple[dict[str, Any], float]:
        bind(stage=stage.value)  # the pipeline's log lines name it
        started = await self._begin(stage)
        try:
            async with asyncio.timeout(timeout):
                output = await body()
        except TimeoutError:
            raise self._timed_out(stage, timeout) from None
        return output, await self._finish(stage, output, started)

    # ------------------------------------------------------------------ stages
    async def _fetch(self) -> dict[str, Any]:
        payload = self.task.payload
        self.work_dir.mkdir(parents=True, exist_ok=True)
        s = self.ctx.settings
        burn = bool((payload.get("options") or {}).get("burn_subtitles"))
        async with self.ctx.io_sem:
            if self.task.kind == TaskKind.URL:
                fetched = await fetch_url(payload["video_url"], self.work_dir,
                                          max_bytes=(s.max_video_mb if burn else
                                                     s.max_download_mb) * 2**20,
                                          max_duration_s=s.max_duration_s,
                                          allow_private=s.allow_private_urls,
                                          cancel=self.stop_event, cookies=s.ytdlp_cookies,
                                          parts=(payload.get("options") or {}).get("parts"),
                                          proxy=s.proxy, subtitles=self._subtitles_first,
                                          video=burn)
            else:
                up, path = payload["upload"], self.files.upload
                assert path is not None
                if not path.is_file() and s.api_url:  # stored by an API on another machine
                    path = await fetch_remote_upload(s.api_url, s.api_token, self.id,
                                                     up, self.work_dir / "upload")
                    self.remote_upload = True
                fetched = await fetch_upload(path, up["filename"],
                                             self.work_dir, max_duration_s=s.max_duration_s)
                if burn and not self.remote_upload:  # kept until the task completes
                    fetched.video = path
                if self.remote_upload:
                    path.unlink(missing_ok=True)  # the normalized WAV is what stages need
        download = self.work_dir / "download"
        if download.exists():  # the normalized WAV is all later stages need
            shutil.rmtree(download, ignore_errors=True)
        return {"audio": self._rel(fetched.audio), "duration_s": round(fetched.duration_s, 3),
                "sha256": await asyncio.to_thread(audio_sha256, fetched.audio),
                "title": fetched.title, "chapters": fetched.chapters, "meta": fetched.meta,
                **({"subtitles": fetched.subtitles} if fetched.subtitles else {}),
                **({"video": self._rel(fetched.video)} if fetched.video else {})}

    @property
    def _subtitles_first(self) -> bool:
        asked = (self.task.payload.get("options") or {}).get("subtitles_first")
        return self.ctx.settings.subtitles_first if asked is None else bool(asked)

    async def _expand(self) -> dict[str, Any]:
        """A list task: read the list (no download) and add one URL task per entry to
        the list's batch, with the list's options.  The entries' idempotency keys make
        a retry after a crash add nothing twice."""
        s, payload = self.ctx.settings, self.task.payload
        options = dict(payload.get("options") or {})

        async def body() -> dict[str, Any]:
            async with self.ctx.io_sem:
                listing = await asyncio.to_thread(
                    list_url, payload["video_url"], allow_private=s.allow_private_urls,
                    max_items=s.max_list_items, cookies=s.ytdlp_cookies, proxy=s.proxy)
            entries = [e for e in listing["entries"] if e["url"]]
            if len(listing["entries"]) > s.max_list_items:
                raise PermanentTaskError(
                    f"the list has {listing['count']} entries; at most {s.max_list_items} "
                    "become tasks (TINGJI_MAX_LIST_ITEMS)", type="TooManyItems")
            if not entries:
                raise PermanentTaskError("the list has no entries tingji can fetch",
                                         type="EmptyList")
            batch_id, tasks, _ = await self.ctx.queue.enqueue_many([
                NewTask(TaskKind.URL, {"video_url": e["url"], "options": options,
                                       "list": {"task_id": self.id, "number": e["number"]}},
                        priority=self.task.priority,
                        idempotency_key=f"list:{self.id}:{e['number']}")
                for e in entries], batch_id=self.task.batch_id)
            return {"title": listing["title"] or f"list of {len(tasks)}",
                    "batch_id": batch_id, "task_ids": [t.id for t in tasks],
                    "entries": len(tasks)}

        out, secs = await self._stage(Stage.FETCH, body, timeout=s.task_timeout_base_s)
        return {**out, "seconds": {"fetch": round(secs, 3)}}

    async def run(self) -> dict[str, Any]:
        """Run the stages that are not checkpointed yet; returns the task's result (the
        worker records the outcome)."""
        w = self.ctx
        if self.task.kind == TaskKind.LIST:
            cp = (await w.reads.checkpoints(self.id)).get(Stage.FETCH)
            return dict(cp.output) if cp is not None else await self._expand()
        cps: dict[Stage, Checkpoint] = await w.reads.checkpoints(self.id)
        seconds = {st.value: round(cp.seconds or 0.0, 3) for st, cp in cps.items()}

        # fetch
        fetch_cp = cps.get(Stage.FETCH)
        if fetch_cp is None or not self._abs(fetch_cp.output["audio"]).is_file():
            fetch_out, seconds["fetch"] = await self._stage(
                Stage.FETCH, self._fetch, timeout=w.settings.task_timeout_base_s)
        else:
            fetch_out = fetch_cp.output
        duration = float(fetch_out["duration_s"])
        title = str(fetch_out.get("title") or self.id)

        # transcribe (in a group of ready tasks, on the model thread)
        tr_cp = cps.get(Stage.TRANSCRIBE)
        if tr_cp is None and fetch_out.get("subtitles") and self._subtitles_first:
            tr_out, seconds["transcribe"] = await self._own_subtitles(fetch_out["subtitles"])
        elif tr_cp is None:
            audio = self._abs(fetch_out["audio"])
            key = await self._transcript_key(audio, fetch_out)
            reused = await self._reuse(key) if key is not None else None
            if reused is not None:
                tr_out, seconds["transcribe"] = reused
            else:
                # an earlier run's decoded pieces (worker.checkpoints), with the VAD it
                # found; else VAD ahead of the model (TINGJI_VAD_PROCESSES)
                partial = await w.reads.partial_transcription(self.id)
                vad = partial.vad if partial is not None else await w.asr.detect_vad(audio)
                self.phase = Phase.READY
                tr_out, seconds["transcribe"] = await self._transcribe(
                    audio, duration, vad, partial, key)
        else:
            tr_out = tr_cp.output
        self.phase = Phase.FINISHING
        segments = await w.reads.segments(self.id)
        # labelled by speaker: the LLM gets (and keeps) one [S1]-tagged line per turn
        text = labelled_text(segments) or str(tr_out.get("text", ""))

        # polish, summary, chapters, mind map, translation (each where asked)
        notes = await write_notes(self._stage, w.llm, self.task.payload.get("options") or {},
                                  cps, text, segments, title, seconds,
                                  self.timeout_for(duration))

        # export
        result = TaskResult(
            title=title, text=text, polished_text=notes.polished, summary=notes.summary,
            segments=len(segments), duration_s=duration,
            speech_s=tr_out.get("speech_s"),
            video_chapters=fetch_out.get("chapters") or [],
            chapters=notes.chapters if notes.chapters is not None
            else fetch_out.get("chapters") or [],
            mindmap=notes.mindmap, translation=notes.translation,
            model=tr_out.get("model"), device=tr_out.get("device"),
            hotwords=tr_out.get("hotwords") or [], speakers=tr_out.get("speakers"),
            speaker_names={}, asr_group=tr_out.get("asr_group"),
            asr_rtf=round(seconds.get("transcribe", 0.0) / duration, 4) if duration else None,
            llm_tokens_in=notes.tokens("tokens_in"), llm_tokens_out=notes.tokens("tokens_out"),
            llm=notes.llm)

        exp_out, seconds["export"] = await self._stage(Stage.EXPORT, lambda: export(
            self.files, title=title, payload=self.task.payload,
            result={**result, "stage_seconds": seconds}, segments=segments,
            audio=self._abs(fetch_out["audio"]), keep_audio=w.settings.keep_audio,
            video=self._abs(fetch_out["video"]) if fetch_out.get("video") else None))
        result["files"] = exp_out["files"]
        result["audio"] = exp_out.get("audio")
        if "video" in exp_out:
            result["video"] = exp_out["video"]
        result["stage_seconds"] = seconds
        return result

    def _hotwords(self) -> list[str]:
        try:
            return merged((self.task.payload.get("options") or {}).get("hotwords") or [],
                          self.ctx.settings.hotwords_file)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise PermanentTaskError(f"TINGJI_HOTWORDS_FILE: {exc}", type="BadSetting") from None

    async def _transcript_key(self, audio: Path, fetch_out: dict[str, Any]) -> str | None:
        """What identifies this task's transcript (``worker.reuse``), once the model is
        loaded; None where it cannot be known (the model did not load: the transcribe
        stage reports that)."""
        with contextlib.suppress(Exception):
            await self.ctx.scheduler.load()
        lane_key = self.ctx.asr.key
        if lane_key is None:
            return None
        sha = fetch_out.get("sha256") or await asyncio.to_thread(audio_sha256, audio)
        return transcript_key(sha, lane_key, self._hotwords(),
                              (self.task.payload.get("options") or {}).get("speakers"))

    async def _own_subtitles(self, subtitles: dict[str, Any]) -> tuple[dict[str, Any], float]:
        """The transcribe stage from the video's own Chinese subtitles: a sentence per
        cue, no ASR (``platform_subtitles_used``)."""
        w = self.ctx
        started = await self._begin(Stage.TRANSCRIBE)
        rows = [SegmentRow(int(a), int(b), str(text)) for a, b, text in subtitles["cues"]]
        await w.queue.note(self.id, w.worker_id, EventType.PLATFORM_SUBTITLES_USED,
                           {"lang": subtitles["lang"], "cues": len(rows)})
        out = {"text": "".join(r.text for r in rows), "segments": len(rows),
               "model": f"platform subtitles ({subtitles['lang']})", "device": None,
               "speech_s": round(sum(r.end_ms - r.start_ms for r in rows) / 1000, 3),
               "subtitles": subtitles["lang"]}
        return out, await self._finish(Stage.TRANSCRIBE, out, started, segments=rows)

    async def _reuse(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The transcript of a completed task with the same audio and settings, taken as
        this task's transcribe stage; None when there is none or reuse is off."""
        w = self.ctx
        if not w.settings.reuse or (self.task.payload.get("options") or {}).get("reuse") \
                is False:
            return None
        source = await w.reads.transcript_source(key, other_than=self.id)
        if source is None:
            return None
        cp = (await w.reads.checkpoints(source)).get(Stage.TRANSCRIBE)
        if cp is None:  # pruned meanwhile, or made before checkpoints were kept
            return None
        segments = await w.reads.segments(source)
        started = await self._begin(Stage.TRANSCRIBE)
        await w.queue.note(self.id, w.worker_id, EventType.TRANSCRIPT_REUSED,
                           {"from_task": source})
        out = {**cp.output, "reused_from": source}
        out.pop("asr_group", None)
        return out, await self._finish(Stage.TRANSCRIBE, out, started, segments=segments,
                                       transcript_key=key)

    async def _transcribe(self, audio: Path, duration: float,
                          vad: list[dict[str, Any]] | None, partial: Partial | None,
                          key: str | None) -> tuple[dict[str, Any], float]:
        """The transcribe stage: it starts when the scheduler admits the task to a group,
        and its time limit scales with the audio of the whole group, decoded together.
        It continues ``partial`` when an earlier run left one, and keeps its own decoded
        pieces as it goes (``worker.checkpoints``)."""
        ctx = self.ctx
        loop = asyncio.get_running_loop()

        def progress(done: float, total: float) -> None:  # called on the model thread
            if total > 0:
                loop.call_soon_threadsafe(self._set_progress, min(1.0, done / total))

        hotwords = self._hotwords()
        speakers = (self.task.payload.get("options") or {}).get("speakers")
        every_s = ctx.settings.asr_checkpoint_s
        job = AsrJob(audio, progress, self.stop_event, vad=vad, hotwords=tuple(hotwords),
                     speakers=speakers, keep=every_s > 0, resume=None if partial is None
                     else Resume(partial.key, partial.pieces, partial.decoded))
        writer = PieceWriter(ctx.queue, self.id, ctx.worker_id, job, every_s)
        saver: asyncio.Task[None] | None = None
        started, limit_s = 0.0, None
        async with asyncio.timeout(None) as limit:
            async def on_admitted(group_audio_s: float) -> None:
                nonlocal started, limit_s, saver
                self.phase = Phase.TRANSCRIBING
                resumed = partial is not None and bool(partial.decoded)
                started = await self._begin(Stage.TRANSCRIBE, min(
                    1.0, partial.decoded_s / (partial.speech_s or 1)) if resumed else 0.0)
                if partial is not None and resumed:
                    await ctx.queue.note(self.id, ctx.worker_id, EventType.TRANSCRIBE_RESUMED,
                                         {"from_s": partial.decoded_s,
                                          "segments": len(partial.decoded)})
                if not ctx.asr.loaded:
                    self.message = "loading the ASR model"
                limit_s = self.timeout_for(group_audio_s)
                limit.reschedule(loop.time() + limit_s)
                if every_s > 0:
                    saver = asyncio.create_task(writer.run())
            try:
                done = await ctx.scheduler.transcribe(self.id, duration, job,
                                                      on_admitted=on_admitted)
            except BaseException as exc:
                if saver is not None:
                    saver.cancel()
                if every_s > 0 and self.stop_reason not in (StopReason.LOST, StopReason.CANCEL):
                    # handed back, timed out or failed: what was decoded is kept
                    await asyncio.shield(writer.flush_quietly())
                if isinstance(exc, TimeoutError) and limit.expired():
                    raise self._timed_out(Stage.TRANSCRIBE, limit_s) from None
                raise
            finally:
                if saver is not None:
                    saver.cancel()
        loaded = ctx.asr.take_speaker_loads()
        if loaded is not None:  # this group loaded the speaker model: count it
            await ctx.queue.record_model_load(ctx.worker_id, loaded)
        tr = transcript_of(job)
        self.message = None
        out: dict[str, Any] = {
            "text": tr.text, "segments": len(tr.segments),
            "speech_s": round(tr.speech_s, 3), "model": ctx.asr.description,
            "device": ctx.asr.device, "asr_seconds": round(tr.seconds, 3)}
        if hotwords:
            out["hotwords"] = hotwords
        if speakers is not None:
            out["speakers"] = len({s.speaker for s in tr.segments if s.speaker is not None})
        if done.stats is not None and done.group_size > 1:
            out["asr_group"] = done.stats.summary()
        return out, await self._finish(Stage.TRANSCRIBE, out, started, segments=tr.segments,
                                       transcript_key=key)

    def _set_progress(self, value: float) -> None:
        self.progress = value
        self.message = None

    def cleanup_files(self, *, upload: bool) -> None:
        """Once the task is finished: the work files (a retry fetches again).  The upload
        too once it completed (the transcript lives in the database, the results under
        results/); a failed or cancelled upload keeps it for a retry."""
        self.files.remove(upload=upload)

    async def release_remote_upload(self) -> None:
        """A completed upload task whose file is not on this machine: the API that
        stored it drops its copy."""
        path, s = self.files.upload, self.ctx.settings
        if self.task.kind == TaskKind.UPLOAD and s.api_url and path is not None \
                and not path.exists():
            await release_remote_upload(s.api_url, s.api_token, self.id)


__all__ = ["AsrLane", "Phase", "RunContext", "StopReason", "TaskRun"]
