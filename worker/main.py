"""The worker process: lifecycle, claiming, heartbeats, pipelining and draining.

- Registers a fresh worker id; at start-up recovers at once the tasks of dead workers
  on this host (their pid is gone, or they ran in a previous boot) and any expired leases.
- Heartbeats every ``TINGJI_HEARTBEAT_SECONDS``: the worker row, and the lease and
  progress of every task it holds (a heartbeat also tells it about cancellations).
- Pipelining: the model works on its own thread while other tasks download and talk to
  the LLM; it claims ahead (a small prefetch) so the model never waits for a download.
- Cross-task batching: tasks ready for ASR are transcribed in groups of up to
  ``TINGJI_ASR_BATCH_TASKS`` (default 8 on CUDA, 1 on a CPU), their speech decoded in
  shared batches (``worker.scheduler``, ``worker.batching``); their VAD can run ahead, in
  processes (``TINGJI_VAD_PROCESSES``, ``worker.engines.torch.vad_pool``).
- SIGTERM/SIGINT: stop claiming; within ``TINGJI_DRAIN_SECONDS`` finish what is
  running, then hand back (release) what is not finished; never leave a task
  ``processing``.  Then mark the worker stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import uuid
from dataclasses import replace
from pathlib import Path

from db.engine import make_engine
from db.errors import LeaseLost
from db.models import EventType, TaskStatus
from db.queue import Queue
from db.reads import Reads
from db.values import LeaseBeat, TaskError
from tingji.logs import bind
from tingji.settings import Settings
from tingji.supervise import EXIT_FATAL
from worker.asr import AsrConfig, AsrEngine, ModelLoadError, resolve_device
from worker.errors import NOT_MEDIA, TaskCancelled, TaskFailure
from worker.outcomes import STOPPED, Ended, Outcome, crashed
from worker.pipeline import Phase, RunContext, StopReason, TaskRun
from worker.recycle import EXIT_RECYCLE, Recycler
from worker.scheduler import AsrScheduler
from worker.stages.llm import Llm, LlmConfig
from worker.stages.webhooks import Dispatcher

log = logging.getLogger("tingji.worker")

PREFETCH = 2  # tasks fetched (or fetching) ahead of the model
# How long an outcome write is retried through database errors before falling back:
# while running, while stopping (the drain must end), and for each fallback.
OUTCOME_PATIENCE_S = 60.0
STOP_PATIENCE_S = 8.0
FALLBACK_PATIENCE_S = 4.0
RUN_PATIENCE_S = 300.0


def boot_id() -> str | None:
    """This boot of the host (Linux); None elsewhere (then the pid alone decides)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


BOOT_ID = boot_id()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Worker:
    def __init__(self, settings: Settings, *, asr: AsrEngine | None = None) -> None:
        self.settings = settings
        self.id = str(uuid.uuid4())
        self.hostname = socket.gethostname()
        self.engine = make_engine(settings.database_url,
                                  sqlite_synchronous=settings.sqlite_synchronous)
        self.queue = Queue.from_settings(self.engine, settings)
        self.reads = Reads(self.engine)
        self.asr = asr or AsrEngine(AsrConfig(
            model=settings.asr_model, vad_model=settings.vad_model,
            punc_model=settings.punc_model, spk_model=settings.spk_model,
            device=settings.device, engine=settings.engine, onnx_int8=settings.onnx_int8,
            data_dir=settings.data_dir, ncpu=settings.asr_threads or AsrConfig.ncpu,
            batch_size_s=settings.batch_size_s, cpu_batch_size_s=settings.cpu_batch_size_s,
            vad_max_end_silence_ms=settings.vad_max_end_silence_ms,
            vad_processes=(settings.vad_processes if settings.vad_processes is not None
                           else default_vad_processes(settings.device))))
        self.llm: Llm | None = None
        if settings.llm_configured:
            assert settings.llm_base_url and settings.llm_model
            self.llm = Llm(LlmConfig(
                base_url=settings.llm_base_url, api_key=settings.llm_api_key,
                model=settings.llm_model, timeout_s=settings.llm_timeout_seconds,
                max_retries=settings.llm_max_retries, chunk_chars=settings.llm_chunk_chars,
                max_tokens=settings.llm_max_tokens), settings.llm_concurrency)
        self.io_sem = asyncio.Semaphore(settings.io_concurrency)
        self.batch_tasks = settings.asr_batch_tasks or default_batch_tasks(settings.device)
        # enough tasks fetched ahead to fill the next group while one runs
        self.prefetch = PREFETCH if self.batch_tasks == 1 else 2 * self.batch_tasks
        self.scheduler = AsrScheduler(self.asr, self.batch_tasks, fetching=self._fetching,
                                      on_loaded=self.on_model_loaded)
        # a run's writes wait out a database outage, keeping its work (``db.engine.Patient``)
        patient = Queue(self.engine, replace(self.queue.config, outage_patience_s=RUN_PATIENCE_S))
        self.ctx = RunContext(self.id, settings, patient, self.reads, self.asr, self.scheduler,
                              self.llm, self.io_sem)
        self.runs: dict[str, TaskRun] = {}
        self.executions: set[asyncio.Task[None]] = set()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()
        self.fatal: str | None = None
        self.signalled = False  # SIGTERM/SIGINT: the drain is bounded
        self.recycler = Recycler(settings.worker_max_rss_mb)
        self.max_active = settings.io_concurrency + self.prefetch
        self.webhooks = Dispatcher(
            self.queue, self.id, secret=settings.webhook_secret,
            allow_private=settings.allow_private_urls, operator_url=settings.webhook_url,
            operator_allow_private=settings.webhook_allow_private,
            callback_secret=settings.callback_secret)

    # ------------------------------------------------------------------ lifecycle
    async def run(self, *, preload: bool = False) -> int:
        loop = asyncio.get_running_loop()
        bind(worker_id=self.id)  # every task this one starts inherits it
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        await self.queue.register(self.id, self.hostname, os.getpid(), boot_id=BOOT_ID,
                                  model=self.asr.config.description)
        log.info("worker %s started (pid %d, model %s, up to %d task(s) per ASR group)",
                 self.id, os.getpid(), self.asr.config.description, self.batch_tasks)
        recovered = await self.queue.requeue_dead_workers(self.hostname, pid_alive,
                                                          boot_id=BOOT_ID, exclude=self.id)
        recovered += await self.queue.requeue_expired()
        for tid, status in recovered:
            log.info("recovered task %s -> %s", tid, status)
        heart = asyncio.create_task(self._heartbeat_loop(), name="heartbeat")
        webhooks = asyncio.create_task(self.webhooks.run(), name="webhooks")
        vad_start = None
        if self.asr.vad_pool is not None:  # processes start while the model loads
            vad_start = asyncio.create_task(self.asr.vad_pool.start(), name="vad-pool")
        try:
            if preload:
                await self._preload()
            await self._claim_loop()
            await self._drain()
        finally:
            for loop_task in (heart, webhooks):
                loop_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop_task
            await self.scheduler.close()
            if vad_start is not None and not vad_start.done():
                vad_start.cancel()
            with contextlib.suppress(Exception):
                await self.queue.stop(self.id)
            if self.llm:
                await self.llm.close()
            await self.engine.dispose()
            log.info("worker %s stopped", self.id)
        if self.fatal:
            log.error("%s", self.fatal)
            return EXIT_FATAL
        return EXIT_RECYCLE if self.recycler.decided else 0

    async def _preload(self) -> None:
        try:
            await self.scheduler.load()
        except ModelLoadError as exc:
            self.fatal = str(exc)
            self.stopping.set()

    async def on_model_loaded(self) -> None:
        n = await self.queue.record_model_load(self.id, self.asr.config.description)
        log.info("model loaded (load #%d of this process) on %s", n, self.asr.device)

    def request_stop(self) -> None:
        self.signalled = True
        if not self.stopping.is_set():
            log.info("stopping: no new tasks; draining for up to %.0f s",
                     self.settings.drain_seconds)
        self.stopping.set()
        self.wake.set()

    def _can_claim(self) -> bool:
        if len(self.runs) >= self.max_active:
            return False
        ahead = sum(1 for r in self.runs.values() if r.phase in (Phase.FETCHING, Phase.READY))
        return ahead < self.prefetch

    def _fetching(self) -> int:
        """Claimed tasks still before the ASR stage (the scheduler may wait for them)."""
        return sum(1 for r in self.runs.values()
                   if r.phase is Phase.FETCHING and not r.stop_reason)

    async def _claim_loop(self) -> None:
        idle = 0.25
        while not self.stopping.is_set():
            claimed = False
            if self._can_claim():
                try:
                    tasks = await self.queue.claim_next(self.id, n=1)
                except Exception as exc:  # noqa: BLE001  (database hiccup: wait, retry)
                    log.warning("claim failed: %s", exc)
                    tasks = []
                for task in tasks:
                    claimed = True
                    run = TaskRun(task, self.ctx)
                    self.runs[task.id] = run
                    ex = asyncio.create_task(self._execute(run), name=f"task-{task.id}")
                    self.executions.add(ex)
                    ex.add_done_callback(self.executions.discard)
            if claimed:
                idle = 0.25
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(idle):
                    await self.wake.wait()
            idle = min(1.0, idle * 1.5)

    async def _drain(self) -> None:
        """Let running tasks finish for up to ``TINGJI_DRAIN_SECONDS``, then stop the rest
        (each records its own outcome: handed back, or cancelled)."""
        while self.executions and self.recycler.decided and not self.signalled:
            await asyncio.wait(set(self.executions), timeout=1.0)  # recycling: all of them
        if self.executions:
            log.info("draining %d task(s)", len(self.executions))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.drain_seconds):
                    while self.executions:
                        await asyncio.wait(set(self.executions), return_when="FIRST_COMPLETED")
        for run in list(self.runs.values()):
            run.stop(StopReason.SHUTDOWN)
        if self.executions:  # outcome writes are bounded by STOP_PATIENCE_S + fallbacks
            await asyncio.wait(set(self.executions), timeout=30)

    # ------------------------------------------------------------------ one task
    async def _execute(self, run: TaskRun) -> None:
        """Run one task, then record how it ended (``_record``): the one place outcomes
        are written.  The run leaves ``self.runs`` however that goes."""
        bind(task_id=run.id)  # this asyncio task's log lines (and the pipeline's) name it
        try:
            outcome = await self._outcome_of(run)
            if outcome.error is not None and outcome.error.code == "disk_full":
                # what this try wrote goes first: the database may need that room to record it
                await asyncio.to_thread(run.cleanup_files, upload=False)
            written = await self._record(run, outcome)
            if written in (Outcome.COMPLETED, Outcome.FAILED, Outcome.CANCEL):
                # the upload is kept for a retry, unless the task is done with it or it is
                # not media at all (an agent steered to upload a key file, say)
                not_media = written is Outcome.FAILED and outcome.error is not None and \
                    outcome.error.type in NOT_MEDIA
                await asyncio.to_thread(run.cleanup_files,
                                        upload=written is Outcome.COMPLETED or not_media)
            if written is Outcome.COMPLETED:
                await run.release_remote_upload()
            log.info("task %s: %s", run.id, written.value)
            if self.recycler.due():
                await self._recycle(run)
        finally:
            self.runs.pop(run.id, None)
            self.wake.set()

    async def _recycle(self, last: TaskRun) -> None:
        """Memory past TINGJI_WORKER_MAX_RSS_MB: no more claims; what is held finishes
        (``_drain``), then the process exits to be restarted (``worker.recycle``)."""
        detail = {"rss_mb": round(self.recycler.rss_mb or 0), "limit_mb":
                  self.recycler.max_rss_mb, "worker_id": self.id}
        log.warning("recycling: resident memory %d MB is over TINGJI_WORKER_MAX_RSS_MB=%s; "
                    "finishing %d task(s), then restarting", detail["rss_mb"],
                    detail["limit_mb"], len(self.runs) - 1)
        self.stopping.set()
        self.wake.set()
        with contextlib.suppress(Exception):
            await self.queue.record(last.id, EventType.WORKER_RECYCLED, detail,
                                    worker_id=self.id)

    async def _outcome_of(self, run: TaskRun) -> Ended:
        """Run the pipeline; how it ended, as the outcome to record."""
        inner = asyncio.create_task(run.run(), name=f"pipeline-{run.id}")
        run.inner = inner
        try:
            return Ended(Outcome.COMPLETED, result=await inner)
        except asyncio.CancelledError:
            if not inner.cancelled():
                raise  # this coroutine itself was cancelled
            reason = run.stop_reason or StopReason.SHUTDOWN
        except TaskCancelled:
            reason = run.stop_reason or StopReason.CANCEL
        except LeaseLost:
            reason = StopReason.LOST
        except ModelLoadError as exc:
            self.fatal = str(exc)
            self.request_stop()
            reason = StopReason.SHUTDOWN
        except TaskFailure as exc:
            return Ended(Outcome.FAILED, TaskError(exc.type, exc.message, exc.retryable,
                                                   exc.code, exc.deferrable))
        except Exception as exc:  # noqa: BLE001  (a bug: fail visibly, keep the worker up)
            return crashed(run.id, exc, self.settings.data_dir)
        return Ended(STOPPED[reason])

    async def _write(self, run: TaskRun, ended: Ended) -> Outcome:
        q, tid, me = self.queue, run.id, self.id
        if ended.outcome is Outcome.COMPLETED:
            assert ended.result is not None
            await q.complete(tid, me, ended.result)
        elif ended.outcome is Outcome.FAILED:
            assert ended.error is not None
            status = await q.fail(tid, me, ended.error)
            log.info("task %s %s: %s", tid, "will be retried" if status is TaskStatus.PENDING
                     else "failed", ended.error.message,
                     extra={"stage": run.stage.value if run.stage else None})
            if status is TaskStatus.PENDING:
                return Outcome.RETRY
        elif ended.outcome is Outcome.CANCEL:
            await q.mark_cancelled(tid, me)
        elif ended.outcome is Outcome.SHUTDOWN:
            if await q.release(tid, me, reason=ended.reason,
                               count_attempt=ended.count_attempt) is TaskStatus.CANCELLED:
                self.webhooks.wake.set()
                return Outcome.CANCEL
            return ended.outcome
        self.webhooks.wake.set()  # a final status may have queued a webhook message
        return ended.outcome

    async def _record(self, run: TaskRun, ended: Ended) -> Outcome:
        """Write the outcome, retrying through database errors (locked past the busy
        timeout, a full disk, a PostgreSQL failover) with backoff.  If it cannot be
        written in time, fall back step by step -- a result that cannot be stored
        becomes a retryable failure, anything else hands the task back -- and as a last
        resort leave it: the heartbeat stops, so its lease expires and the task is
        requeued.  The run is never left in ``self.runs``."""
        if ended.outcome is Outcome.LOST:
            log.warning("task %s was taken away from this worker (lease lost)", run.id)
            return Outcome.LOST
        ladder = [ended]
        if ended.outcome is Outcome.COMPLETED:
            ladder.append(Ended(Outcome.FAILED, TaskError(
                "InternalError", "the result could not be stored in the database", True)))
        if ended.outcome is not Outcome.SHUTDOWN:
            ladder.append(Ended(Outcome.SHUTDOWN, reason="the worker could not record the "
                                "outcome in the database", count_attempt=True))
        loop = asyncio.get_running_loop()
        for step in ladder:
            started, delay = loop.time(), 0.25
            while True:
                try:
                    return await asyncio.shield(self._write(run, step))
                except LeaseLost:
                    log.warning("task %s was taken away from this worker (lease lost)", run.id)
                    return Outcome.LOST
                except Exception as exc:  # noqa: BLE001  (database trouble: retry, then fall back)
                    patience = (FALLBACK_PATIENCE_S if step is not ended else STOP_PATIENCE_S
                                if self.stopping.is_set() else OUTCOME_PATIENCE_S)
                    left = started + patience - loop.time()
                    log.warning("task %s: could not record %s: %s: %s", run.id,
                                step.outcome.value, type(exc).__name__, str(exc)[:300])
                    if left <= 0:
                        break
                    await self._pause(min(delay, left))
                    delay = min(delay * 2, 5.0)
        log.error("task %s: no outcome could be recorded; leaving it to expire its lease "
                  "and be requeued", run.id)
        return Outcome.ABANDONED

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake up when the worker starts stopping (patience shrinks then)."""
        if self.stopping.is_set():
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self.stopping.wait()

    # ------------------------------------------------------------------ heartbeats
    async def _heartbeat_loop(self) -> None:
        beat = self.settings.heartbeat_seconds
        rescue_every = max(1, int(self.settings.lease_seconds / 2 / beat))
        n = 0
        while True:
            await asyncio.sleep(beat)
            n += 1
            try:
                await self._beat(n % rescue_every == 0)
            except Exception as exc:  # noqa: BLE001  (keep beating through db hiccups)
                log.warning("heartbeat failed: %s", exc)

    async def _beat(self, rescue: bool) -> None:
        current = self.scheduler.current[0].task_id if self.scheduler.current else \
            next(iter(self.runs), None)
        runs = [r for r in self.runs.values() if not r.stop_reason]
        cancel, lost = await self.queue.beat(
            self.id, [LeaseBeat(r.id, r.progress, r.message) for r in runs],
            current_task_id=current)
        for run in runs:
            if run.id in lost:
                run.stop(StopReason.LOST)
            elif run.id in cancel:
                log.info("task %s: cancel requested", run.id)
                run.stop(StopReason.CANCEL)
        if rescue:
            for tid, status in await self.queue.requeue_expired():
                log.info("requeued expired task %s -> %s", tid, status)


def default_vad_processes(device: str) -> int:
    """``TINGJI_VAD_PROCESSES`` when unset: on CUDA a quarter of the cores (1-4), so VAD
    keeps up with the GPU; on a CPU none (the cores are busy decoding anyway)."""
    if not resolve_device(device).startswith("cuda"):
        return 0
    return max(1, min(4, (os.cpu_count() or 4) // 4))


def default_batch_tasks(device: str) -> int:
    """``TINGJI_ASR_BATCH_TASKS`` when unset: 8 tasks per group on CUDA, 1 on a CPU
    (where funasr decodes one segment at a time and batching gains nothing)."""
    return 8 if resolve_device(device).startswith("cuda") else 1


def run_worker(settings: Settings, *, preload: bool = False) -> int:
    if settings.worker_nice:
        # Transcription is batch work: on a shared machine the API (and the desktop)
        # come first.  Set before any thread starts, so torch's threads inherit it.
        os.nice(settings.worker_nice)
    worker = Worker(settings)

    async def main() -> int:
        return await worker.run(preload=preload)

    code = asyncio.run(main())
    worker.asr.close()
    return code


__all__ = ["Worker", "run_worker", "pid_alive"]
