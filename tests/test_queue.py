"""Every queue transition, allowed and forbidden, on SQLite and PostgreSQL."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from db.errors import IdempotencyMismatch, InvalidTransition, LeaseLost, QueueFull, TaskNotFound
from db.models import Stage, TaskKind, TaskStatus
from db.queue import LeaseBeat, NewTask, Queue, SegmentRow, TaskError
from db.reads import Reads

T0 = datetime(2026, 11, 26, 8, 0, 0, tzinfo=UTC)
W1, W2 = "00000000-0000-0000-0000-0000000000w1", "00000000-0000-0000-0000-0000000000w2"


def item(n: int = 0, **kw: object) -> NewTask:
    return NewTask(kind=TaskKind.URL, payload={"video_url": f"https://example.com/{n}.mp4"},
                   **kw)  # type: ignore[arg-type]


async def events(q: Queue, task_id: str) -> list[tuple[str, str | None, str | None]]:
    return [(e.event, e.from_status, e.to_status) for e in await Reads(q.engine).events(task_id)]


async def status(q: Queue, task_id: str) -> TaskStatus:
    task = await Reads(q.engine).task(task_id)
    assert task is not None
    return TaskStatus(task.status)


async def claimed(q: Queue, now: datetime = T0, worker: str = W1) -> str:
    tasks = await q.claim_next(worker, now=now)
    assert len(tasks) == 1
    return tasks[0].id


async def test_enqueue_then_claim_sets_lease_and_attempts(queue: Queue) -> None:
    enq = await queue.enqueue(item(), now=T0)
    assert enq.created and enq.task.status == TaskStatus.PENDING
    [task] = await queue.claim_next(W1, now=T0 + timedelta(seconds=1))
    assert task.id == enq.task.id
    assert task.status == TaskStatus.PROCESSING
    assert task.attempts == 1 and task.lease_owner == W1
    assert task.lease_expires_at == T0 + timedelta(seconds=31)
    assert task.started_at == T0 + timedelta(seconds=1)
    assert await events(queue, task.id) == [("enqueued", None, "pending"),
                                            ("claimed", "pending", "processing")]
    assert await queue.claim_next(W2, now=T0) == []


async def test_claim_order_priority_then_age_and_run_after(queue: Queue) -> None:
    low = (await queue.enqueue(item(1), now=T0)).task
    high = (await queue.enqueue(item(2, priority=5), now=T0 + timedelta(seconds=1))).task
    low2 = (await queue.enqueue(item(3), now=T0 + timedelta(seconds=2))).task
    got = await queue.claim_next(W1, n=10, now=T0 + timedelta(seconds=3))
    assert [t.id for t in got] == [high.id, low.id, low2.id]


async def test_claim_skips_tasks_not_yet_due(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await queue.claim_next(W1, now=T0)
    await queue.fail(tid, W1, TaskError("Net", "timeout", True), now=T0)
    task = await Reads(queue.engine).task(tid)
    assert task is not None and task.run_after > T0
    assert await queue.claim_next(W1, now=T0 + timedelta(seconds=1)) == []
    assert [t.id for t in await queue.claim_next(W1, now=task.run_after)] == [tid]


async def test_a_sites_refusal_is_tried_again_without_using_attempts(queue: Queue) -> None:
    """A deferrable failure (a site's 412/429, the network) goes back to pending with a
    growing backoff and its attempt given back, for as long as the deferral window
    lasts; then it fails with its code, whatever attempts are left."""
    queue.config.rng = random.Random(3)
    queue.config.defer_window = timedelta(hours=12)
    tid = (await queue.enqueue(item(), now=T0)).task.id
    refused = TaskError("FetchFailed", "the site refuses requests for now", True,
                        "rate_limited", True)
    now, delays = T0, []
    for tries in range(1, 6):  # more refusals than the task has attempts
        await claimed(queue, now)
        assert await queue.fail(tid, W1, refused, now=now) == TaskStatus.PENDING
        task = await Reads(queue.engine).task(tid)
        assert task is not None and task.attempts == 0  # none used
        assert task.error is not None and task.error["code"] == "rate_limited"
        assert task.error["tries"] == tries and task.error["since"] == T0.isoformat()
        assert task.message is not None and task.message.startswith("next try at ")
        delays.append((task.run_after - now).total_seconds())
        now = task.run_after
    assert delays[-1] > delays[0] * 4  # growing
    evs = [e for e in await Reads(queue.engine).events(tid) if e.event == "retry_scheduled"]
    assert len(evs) == 5 and all(e.detail and e.detail["counted"] is False for e in evs)
    # past the window: failed for good, with its code
    await claimed(queue, T0 + timedelta(hours=12, seconds=1))
    assert await queue.fail(tid, W1, refused, now=T0 + timedelta(hours=12, seconds=1)) \
        == TaskStatus.FAILED
    task = await Reads(queue.engine).task(tid)
    assert task is not None and task.error is not None
    assert task.error["code"] == "rate_limited" and "12 hours" in task.error["message"]


async def test_a_permanent_refusal_fails_at_once(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    gone = TaskError("Unavailable", "the video was not found", False, "not_found")
    assert await queue.fail(tid, W1, gone, now=T0) == TaskStatus.FAILED
    task = await Reads(queue.engine).task(tid)
    assert task is not None and task.attempts == 1 and task.error is not None
    assert task.error["code"] == "not_found"


async def test_transcription_checkpoints_are_kept_while_held(queue: Queue) -> None:
    """Decoded pieces are written only by the worker holding the task, saving a piece
    twice is harmless, another decoding replaces them, and the transcribe checkpoint
    (or a new fetch) removes them."""
    reads = Reads(queue.engine)
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    vad = [{"key": "audio", "value": [[0, 900], [1200, 2500], [3000, 3400]]}]
    piece = {"key": "seg0", "text": "听 记", "timestamp": [[10, 200], [300, 500]]}
    save = dict(key="k1", vad=vad, pieces=3, speech_s=2.6)
    await queue.save_transcription(tid, W1, **save, decoded=[(0, 0.4, piece)], now=T0)
    await queue.save_transcription(tid, W1, **save, decoded=[(0, 0.4, piece),
                                                             (2, 0.9, piece)], now=T0)
    partial = await reads.partial_transcription(tid)
    assert partial is not None and partial.key == "k1" and partial.vad == vad
    assert partial.pieces == 3 and partial.decoded == {0: piece, 2: piece}
    assert partial.decoded_s == pytest.approx(1.3)
    with pytest.raises(LeaseLost):
        await queue.save_transcription(tid, W2, **save, decoded=[(1, 1.3, piece)], now=T0)
    await queue.save_transcription(tid, W1, **{**save, "key": "k2"},
                                   decoded=[(1, 1.3, piece)], now=T0)
    partial = await reads.partial_transcription(tid)
    assert partial is not None and partial.key == "k2" and set(partial.decoded) == {1}
    await queue.checkpoint(tid, W1, Stage.TRANSCRIBE, {"text": "听记"}, segments=[],
                           transcript_key="a" * 64, now=T0)
    assert await reads.partial_transcription(tid) is None
    task = await reads.task(tid)
    assert task is not None and task.transcript_key == "a" * 64


async def test_heartbeat_extends_lease_only_for_owner(queue: Queue) -> None:
    await queue.enqueue(item(), now=T0)
    tid = await claimed(queue)
    assert await queue.beat(W1, [LeaseBeat(tid, progress=0.5, message="half")],
                            now=T0 + timedelta(seconds=20)) == (set(), set())
    task = await Reads(queue.engine).task(tid)
    assert task is not None and task.progress == 0.5 and task.message == "half"
    assert task.lease_expires_at == T0 + timedelta(seconds=50)
    assert await queue.beat(W2, [LeaseBeat(tid)], now=T0) == (set(), {tid})  # not W2's


async def test_complete_is_guarded_and_final(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    with pytest.raises(LeaseLost):  # pending: nobody holds it
        await queue.complete(tid, W1, {"text": "x"}, now=T0)
    await claimed(queue)
    with pytest.raises(LeaseLost):  # not the owner
        await queue.complete(tid, W2, {"text": "x"}, now=T0)
    await queue.complete(tid, W1, {"text": "好"}, now=T0 + timedelta(seconds=5))
    task = await Reads(queue.engine).task(tid)
    assert task is not None
    assert task.status == TaskStatus.COMPLETED and task.result == {"text": "好"}
    assert task.completed_at == T0 + timedelta(seconds=5) and task.lease_owner is None
    with pytest.raises(LeaseLost):  # already completed
        await queue.complete(tid, W1, {"text": "again"}, now=T0)
    with pytest.raises(LeaseLost):
        await queue.fail(tid, W1, TaskError("X", "late", False), now=T0)
    assert (await events(queue, tid))[-1] == ("completed", "processing", "completed")


async def test_retryable_failure_backs_off_exponentially_then_fails(queue: Queue) -> None:
    queue.config.rng = random.Random(7)
    tid = (await queue.enqueue(item(), now=T0)).task.id
    now = T0
    delays = []
    for attempt in (1, 2):
        await claimed(queue, now)
        assert await queue.fail(tid, W1, TaskError("Net", "boom", True), now=now) \
            == TaskStatus.PENDING
        task = await Reads(queue.engine).task(tid)
        assert task is not None and task.error == {"type": "Net", "message": "boom",
                                                   "retryable": True}
        delay = (task.run_after - now).total_seconds()
        base = 10 * 2 ** (attempt - 1)
        assert base / 2 <= delay <= base, (attempt, delay)
        delays.append(delay)
        now = task.run_after
    await claimed(queue, now)
    assert await queue.fail(tid, W1, TaskError("Net", "boom", True), now=now) \
        == TaskStatus.FAILED
    task = await Reads(queue.engine).task(tid)
    assert task is not None and task.attempts == 3 and task.completed_at == now
    evs = [e[0] for e in await events(queue, tid)]
    assert evs.count("retry_scheduled") == 2 and evs[-1] == "failed"
    assert delays[1] > delays[0] / 2


async def test_permanent_failure_fails_at_once(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    got = await queue.fail(tid, W1, TaskError("NoAudio", "no audio stream", False), now=T0)
    assert got == TaskStatus.FAILED
    assert (await events(queue, tid))[-1] == ("failed", "processing", "failed")


async def test_cancel_pending_is_immediate(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    task = await queue.request_cancel(tid, now=T0)
    assert task.status == TaskStatus.CANCELLED
    assert await queue.claim_next(W1, now=T0) == []
    assert [e[0] for e in await events(queue, tid)] == ["enqueued", "cancel_requested",
                                                        "cancelled"]
    with pytest.raises(InvalidTransition):
        await queue.request_cancel(tid, now=T0)


async def test_cancel_processing_is_finished_by_its_worker(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    task = await queue.request_cancel(tid, now=T0)
    assert task.status == TaskStatus.PROCESSING and task.cancel_requested
    assert (await queue.request_cancel(tid, now=T0)).cancel_requested  # idempotent
    assert await queue.beat(W1, [LeaseBeat(tid)], now=T0) == ({tid}, set())
    assert await queue.stage_started(tid, W1, Stage.TRANSCRIBE, now=T0) is True
    await queue.mark_cancelled(tid, W1, now=T0)
    assert await status(queue, tid) == TaskStatus.CANCELLED
    assert [e[0] for e in await events(queue, tid)] == [
        "enqueued", "claimed", "cancel_requested", "stage_started", "cancelled"]


async def test_cancel_unknown_and_finished(queue: Queue) -> None:
    with pytest.raises(TaskNotFound):
        await queue.request_cancel("nope", now=T0)
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    await queue.complete(tid, W1, {}, now=T0)
    with pytest.raises(InvalidTransition):
        await queue.request_cancel(tid, now=T0)


async def test_release_returns_task_to_pending(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    assert await queue.release(tid, W1, now=T0 + timedelta(seconds=2)) == TaskStatus.PENDING
    assert (await events(queue, tid))[-1] == ("released", "processing", "pending")
    [again] = await queue.claim_next(W2, now=T0 + timedelta(seconds=2))
    assert again.id == tid and again.attempts == 1  # a graceful stop costs no attempt
    with pytest.raises(LeaseLost):
        await queue.release(tid, W1, now=T0)
    # five graceful stops in a row, then a permanent failure: still its first attempt
    for i in range(5):
        await queue.release(tid, W2, now=T0 + timedelta(seconds=3 + i))
        [again] = await queue.claim_next(W2, now=T0 + timedelta(seconds=3 + i))
    assert again.attempts == 1
    # a hand-back that must count (the worker could not record an outcome) does
    await queue.release(tid, W2, count_attempt=True, now=T0 + timedelta(seconds=9))
    [again] = await queue.claim_next(W2, now=T0 + timedelta(seconds=9))
    assert again.attempts == 2


async def test_release_of_cancel_requested_task_cancels_it(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    await queue.request_cancel(tid, now=T0)
    assert await queue.release(tid, W1, now=T0) == TaskStatus.CANCELLED


async def test_requeue_expired_leases(queue: Queue) -> None:
    queue.config.max_attempts = 2
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    assert await queue.requeue_expired(now=T0 + timedelta(seconds=29)) == []
    assert await queue.requeue_expired(now=T0 + timedelta(seconds=31)) == \
        [(tid, TaskStatus.PENDING)]
    t1 = T0 + timedelta(seconds=31)
    await claimed(queue, t1, W2)
    with pytest.raises(LeaseLost):  # the first worker's late write is refused
        await queue.complete(tid, W1, {}, now=t1)
    assert await queue.requeue_expired(now=t1 + timedelta(seconds=31)) == \
        [(tid, TaskStatus.FAILED)]
    task = await Reads(queue.engine).task(tid)
    assert task is not None and task.error is not None
    assert task.error["type"] == "LeaseExpired" and task.attempts == 2
    evs = await events(queue, tid)
    assert [e for e in evs if e[0] == "lease_expired"] == [
        ("lease_expired", "processing", "pending"), ("lease_expired", "processing", "failed")]


async def test_requeue_dead_workers_on_this_host(queue: Queue) -> None:
    await queue.register(W1, "host-a", 111, now=T0)
    await queue.register(W2, "host-a", 222, now=T0)
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue, T0, W1)
    got = await queue.requeue_dead_workers("host-a", lambda pid: pid != 111, exclude=W2,
                                           now=T0 + timedelta(seconds=1))
    assert got == [(tid, TaskStatus.PENDING)]
    ws = {w.id: w for w in await Reads(queue.engine).workers(now=T0)}
    assert ws[W1].stopped_at is not None and ws[W2].stopped_at is None


async def test_a_previous_boots_workers_are_dead_whatever_their_pid(queue: Queue) -> None:
    await queue.register(W1, "host-a", 111, boot_id="boot-1", now=T0)
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue, T0, W1)
    alive = lambda pid: True  # noqa: E731  (pid 111 was reused after the reboot)
    assert await queue.requeue_dead_workers("host-a", alive, boot_id="boot-1",
                                            now=T0) == []
    got = await queue.requeue_dead_workers("host-a", alive, boot_id="boot-2", exclude=W2,
                                           now=T0 + timedelta(seconds=1))
    assert got == [(tid, TaskStatus.PENDING)]  # at once, not when the lease runs out


async def test_retry_failed_and_cancelled_only(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    with pytest.raises(InvalidTransition):
        await queue.retry(tid, now=T0)  # pending
    await claimed(queue)
    with pytest.raises(InvalidTransition):
        await queue.retry(tid, now=T0)  # processing
    await queue.fail(tid, W1, TaskError("Bad", "bad media", False), now=T0)
    task = await queue.retry(tid, now=T0 + timedelta(seconds=1))
    assert task.status == TaskStatus.PENDING and task.error is None
    assert task.max_attempts == task.attempts + 3
    await claimed(queue, T0 + timedelta(seconds=1))
    await queue.complete(tid, W1, {}, now=T0)
    with pytest.raises(InvalidTransition):
        await queue.retry(tid, now=T0)  # completed
    cid = (await queue.enqueue(item(2), now=T0)).task.id
    await queue.request_cancel(cid, now=T0)
    assert (await queue.retry(cid, now=T0)).status == TaskStatus.PENDING
    assert ("retried", "cancelled", "pending") in await events(queue, cid)


async def test_capacity_limit(queue: Queue) -> None:
    queue.config.max_pending = 3
    for n in range(3):
        await queue.enqueue(item(n), now=T0)
    with pytest.raises(QueueFull) as info:
        await queue.enqueue(item(9), now=T0)
    assert info.value.retry_after > 0 and info.value.capacity == 3
    with pytest.raises(QueueFull):
        await queue.enqueue_many([item(10)], now=T0)
    await queue.claim_next(W1, now=T0)  # processing tasks do not count
    await queue.enqueue(item(9), now=T0)
    assert (await Reads(queue.engine).counts())["pending"] == 3


async def test_enqueue_many_is_all_or_nothing(queue: Queue) -> None:
    queue.config.max_pending = 5
    batch_id, tasks, created = await queue.enqueue_many([item(n) for n in range(4)], now=T0)
    assert created
    assert len(tasks) == 4 and all(t.batch_id == batch_id for t in tasks)
    with pytest.raises(QueueFull):
        await queue.enqueue_many([item(n) for n in range(2)], now=T0)
    listed, total = await Reads(queue.engine).list_tasks(batch_id=batch_id)
    assert total == 4 and {t.id for t in listed} == {t.id for t in tasks}
    assert (await Reads(queue.engine).counts())["pending"] == 4


async def test_idempotency_key_returns_the_live_task(queue: Queue) -> None:
    first = await queue.enqueue(item(key := 1, idempotency_key="k-1"), now=T0)
    again = await queue.enqueue(item(key, idempotency_key="k-1"), now=T0)
    assert first.created and not again.created and again.task.id == first.task.id
    await claimed(queue)
    assert (await queue.enqueue(item(key, idempotency_key="k-1"), now=T0)).task.id == \
        first.task.id
    await queue.complete(first.task.id, W1, {}, now=T0)
    # durable: a finished task keeps its key (re-running a night's batch redoes nothing)
    after = await queue.enqueue(item(key, idempotency_key="k-1"), now=T0)
    assert not after.created and after.task.id == first.task.id
    assert after.task.status == TaskStatus.COMPLETED
    # the same key for another request: refused, naming the key
    with pytest.raises(IdempotencyMismatch) as info:
        await queue.enqueue(item(2, idempotency_key="k-1"), now=T0)
    assert "k-1" in str(info.value) and first.task.id in str(info.value)


async def test_a_batch_key_returns_the_original_batch(queue: Queue) -> None:
    items = [item(n, idempotency_key=f"night/{n}") for n in range(3)]
    batch_id, tasks, created = await queue.enqueue_many(items, now=T0)
    again_id, again, again_created = await queue.enqueue_many(items, now=T0)
    assert created and not again_created
    assert again_id == batch_id and [t.id for t in again] == [t.id for t in tasks]
    with pytest.raises(IdempotencyMismatch):  # part of it, with another entry
        await queue.enqueue_many([items[0], item(9, idempotency_key="night/9")], now=T0)
    assert (await Reads(queue.engine).counts())["pending"] == 3


async def test_checkpoints_and_segments(queue: Queue) -> None:
    tid = (await queue.enqueue(item(), now=T0)).task.id
    await claimed(queue)
    reads = Reads(queue.engine)
    await queue.stage_started(tid, W1, Stage.FETCH, now=T0)
    await queue.checkpoint(tid, W1, Stage.FETCH, {"audio_path": "/x.wav", "duration": 3.5},
                           seconds=1.25, title="讲座", now=T0)
    await queue.stage_started(tid, W1, Stage.TRANSCRIBE, now=T0)
    segs = [SegmentRow(0, 1200, "你好。"), SegmentRow(1500, 2900, "世界！")]
    await queue.checkpoint(tid, W1, Stage.TRANSCRIBE, {"text": "你好。世界！"}, segments=segs,
                           seconds=2.0, now=T0)
    cps = await reads.checkpoints(tid)
    assert set(cps) == {Stage.FETCH, Stage.TRANSCRIBE}
    assert cps[Stage.FETCH].output["audio_path"] == "/x.wav" and cps[Stage.FETCH].seconds == 1.25
    assert await reads.segments(tid) == segs
    task = await reads.task(tid)
    assert task is not None and task.title == "讲座" and task.stage == Stage.TRANSCRIBE
    evs = await reads.events(tid)
    assert [(e.event, (e.detail or {}).get("stage")) for e in evs if "stage" in e.event] == [
        ("stage_started", "fetch"), ("stage_completed", "fetch"),
        ("stage_started", "transcribe"), ("stage_completed", "transcribe")]
    with pytest.raises(LeaseLost):
        await queue.checkpoint(tid, W2, Stage.POLISH, {}, now=T0)


async def test_prune_removes_old_terminal_tasks_only(queue: Queue) -> None:
    old = (await queue.enqueue(item(1), now=T0)).task.id
    await queue.request_cancel(old, now=T0)
    live = (await queue.enqueue(item(2), now=T0)).task.id
    recent = (await queue.enqueue(item(3), now=T0)).task.id
    await queue.request_cancel(recent, now=T0 + timedelta(days=9))
    pruned = await queue.prune(timedelta(days=7), now=T0 + timedelta(days=10))
    assert [tid for tid, _ in pruned] == [old]
    assert pruned[0][1]["video_url"] == "https://example.com/1.mp4"
    reads = Reads(queue.engine)
    assert await reads.task(old) is None and await reads.events(old) == []
    assert await reads.task(live) is not None and await reads.task(recent) is not None


async def test_worker_registry(queue: Queue) -> None:
    await queue.register(W1, "host", 42, now=T0)
    assert await queue.record_model_load(W1, "paraformer-zh", now=T0) == 1
    await queue.beat(W1, [], current_task_id="t", now=T0 + timedelta(seconds=3))
    [w] = await Reads(queue.engine).workers(now=T0)
    assert (w.model, w.model_loads, w.current_task_id, w.pid) == ("paraformer-zh", 1, "t", 42)
    assert w.heartbeat_at == T0 + timedelta(seconds=3)
    await queue.stop(W1, now=T0 + timedelta(seconds=4))
    [w] = await Reads(queue.engine).workers(now=T0 + timedelta(seconds=5))
    assert w.stopped_at == T0 + timedelta(seconds=4) and w.current_task_id is None


async def test_status_check_constraint_rejects_unknown_status(queue: Queue) -> None:
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError
    tid = (await queue.enqueue(item(), now=T0)).task.id
    with pytest.raises(IntegrityError):
        async with queue.engine.begin() as conn:
            await conn.execute(text("UPDATE tasks SET status = 'running' WHERE id = :id"),
                               {"id": tid})


async def test_transition_helper_checks_guards_and_clears_the_lease(queue: Queue) -> None:
    from db.errors import TransitionNotAllowed
    from db.models import EventType

    tid = (await queue.enqueue(item(), now=T0)).task.id

    def refused(conn):
        with pytest.raises(TransitionNotAllowed):  # a bug, not a 409
            queue._transition(conn, tid, TaskStatus.PENDING, TaskStatus.COMPLETED,
                              EventType.COMPLETED, T0)
        # the status guard: the task is not processing, so a user-side change matches nothing
        return queue._transition(conn, tid, TaskStatus.FAILED, TaskStatus.PENDING,
                                 EventType.RETRIED, T0)

    assert await queue._tx(refused) is None
    await claimed(queue)
    with pytest.raises(LeaseLost):  # the lease guard
        await queue._tx(lambda conn: queue._transition(
            conn, tid, TaskStatus.PROCESSING, TaskStatus.FAILED, EventType.FAILED, T0,
            worker_id=W2))
    later = T0 + timedelta(seconds=5)
    await queue._tx(lambda conn: queue._transition(
        conn, tid, TaskStatus.PROCESSING, TaskStatus.FAILED, EventType.FAILED, later,
        worker_id=W1, values={"message": "x"}))
    task = await Reads(queue.engine).task(tid)
    assert task is not None and task.status == TaskStatus.FAILED
    assert task.lease_owner is None and task.lease_expires_at is None
    assert task.completed_at == later and task.message == "x"
    assert (await events(queue, tid))[-1] == ("failed", "processing", "failed")


async def test_one_heartbeat_for_all_leases(queue: Queue) -> None:

    for i in range(3):
        await queue.enqueue(item(i), now=T0)
    a, b, c = [t.id for t in await queue.claim_next(W1, n=3, now=T0)]
    await queue.register(W1, "host", 1, now=T0)
    await queue.request_cancel(b, now=T0)
    await queue.requeue_expired(now=T0 + timedelta(seconds=60))  # all three expire ...
    d = (await queue.claim_next(W1, n=3, now=T0 + timedelta(seconds=61)))  # ... a and c back
    assert {t.id for t in d} == {a, c}
    now = T0 + timedelta(seconds=62)
    cancel, lost = await queue.beat(W1, [LeaseBeat(a, 0.5, "half"), LeaseBeat(b),
                                         LeaseBeat(c, 2.0)], current_task_id=a, now=now)
    assert cancel == set() and lost == {b}  # b was cancelled when its lease expired
    ta, tc = (await Reads(queue.engine).task(a)), (await Reads(queue.engine).task(c))
    assert ta is not None and tc is not None
    assert ta.progress == 0.5 and ta.message == "half" and tc.progress == 1.0
    assert ta.lease_expires_at == now + timedelta(seconds=30)
    [w] = await Reads(queue.engine).workers(now=now)
    assert w.heartbeat_at == now and w.current_task_id == a
    await queue.request_cancel(c, now=now)
    cancel, lost = await queue.beat(W1, [LeaseBeat(c)], now=now)
    assert cancel == {c} and lost == set()


async def test_a_database_error_mid_transaction_rolls_it_all_back(queue: Queue) -> None:
    """A statement refused in the middle of a transition (here the event insert, by a
    trigger) raises SQLAlchemy's error class, whichever path ran the statement (the
    SQLite writer runs hot statements on its cursor), and leaves nothing half-written."""
    from sqlalchemy import text
    from sqlalchemy.exc import IntegrityError

    kept = (await queue.enqueue(item(1), now=T0)).task.id
    async with queue.engine.begin() as conn:
        if queue.engine.dialect.name == "sqlite":
            await conn.execute(text(
                "CREATE TRIGGER refuse_claims BEFORE INSERT ON task_events "
                "WHEN NEW.event = 'claimed' BEGIN SELECT RAISE(ABORT, 'refused'); END"))
        else:
            await conn.execute(text(
                "CREATE FUNCTION refuse_claims() RETURNS trigger AS $$ BEGIN "
                "IF NEW.event = 'claimed' THEN RAISE unique_violation USING MESSAGE = "
                "'refused'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"))
            await conn.execute(text(
                "CREATE TRIGGER refuse_claims BEFORE INSERT ON task_events "
                "FOR EACH ROW EXECUTE FUNCTION refuse_claims()"))
    try:
        with pytest.raises(IntegrityError):
            await queue.claim_next(W1, now=T0)
        assert await status(queue, kept) == TaskStatus.PENDING  # the UPDATE rolled back
        assert await events(queue, kept) == [("enqueued", None, "pending")]
        # the connection is usable afterwards, for hot and other statements alike
        other = (await queue.enqueue(item(2), now=T0)).task.id
        assert await queue.prune(timedelta(days=1), now=T0) == []
        assert await status(queue, other) == TaskStatus.PENDING
    finally:
        async with queue.engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER refuse_claims" + (
                "" if queue.engine.dialect.name == "sqlite" else " ON task_events")))
            if queue.engine.dialect.name != "sqlite":
                await conn.execute(text("DROP FUNCTION refuse_claims()"))
    got = await queue.claim_next(W1, n=5, now=T0)
    assert {t.id for t in got} == {kept, other}


# ---------------------------------------------------------------- webhook outbox
HOOK = "http://127.0.0.1:9/hook"


def hooked(n: int, callback: str | None = None) -> NewTask:
    options = {"callback_url": callback} if callback else {}
    return NewTask(kind=TaskKind.URL, payload={"video_url": f"https://example.com/{n}.mp4",
                                               "options": options})


async def deliveries(q: Queue) -> list[dict[str, object]]:
    from sqlalchemy import select

    from db.models import WebhookDelivery
    D = WebhookDelivery.__table__
    async with q.engine.connect() as conn:
        rows = (await conn.execute(select(D).order_by(D.c.created_at, D.c.event))).all()
    return [dict(r._mapping) for r in rows]


async def test_final_statuses_write_webhook_deliveries_in_the_same_transaction(
        queue: Queue) -> None:
    queue.config.webhook_url = HOOK
    plain = (await queue.enqueue(hooked(0), now=T0)).task.id
    own = (await queue.enqueue(hooked(1, "http://127.0.0.1:9/own?token=s3cret"), now=T0)).task.id
    assert await deliveries(queue) == []  # nothing until a final status
    for _ in range(2):
        await queue.complete(await claimed(queue), W1, {"text": "x"}, now=T0)
    rows = await deliveries(queue)
    assert sorted((r["task_id"], r["url"]) for r in rows) == sorted(
        [(plain, HOOK), (own, HOOK), (own, "http://127.0.0.1:9/own?token=s3cret")])
    body = rows[0]["body"]
    assert isinstance(body, dict) and body["event"] == "task.completed"
    assert body["delivery_id"] == rows[0]["id"] and body["task"]["status"] == "completed"
    # a cancelled pending task and an expired lease with no attempts left report too
    gone = (await queue.enqueue(hooked(2), now=T0)).task.id
    await queue.request_cancel(gone, now=T0)
    assert any(r["task_id"] == gone and r["event"] == "task.cancelled"
               for r in await deliveries(queue))


async def test_a_batch_reports_once_when_its_last_task_ends(queue: Queue) -> None:
    queue.config.webhook_url = HOOK
    batch_id, tasks, _ = await queue.enqueue_many([hooked(i) for i in range(3)], now=T0)
    got = await queue.claim_next(W1, n=3, now=T0)
    await queue.complete(got[0].id, W1, {}, now=T0)
    await queue.fail(got[1].id, W1, TaskError("Bad", "no", False), now=T0)
    assert [r["event"] for r in await deliveries(queue)] == ["task.completed", "task.failed"]
    await queue.complete(got[2].id, W1, {}, now=T0)
    rows = await deliveries(queue)
    batch = [r for r in rows if r["event"] == "batch.finished"]
    assert len(batch) == 1 and batch[0]["batch_id"] == batch_id
    summary = batch[0]["body"]["batch"]  # type: ignore[index]
    assert summary["total"] == 3 and summary["completed"] == 2 and summary["failed"] == 1
    assert {t["task_id"] for t in summary["tasks"]} == {t.id for t in tasks}


async def test_a_batch_ends_once_and_tells_only_who_may_see_it(
        queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    """``batch.finished`` is sent once, however often a task is retried after it; it
    goes to the operator's receiver, and to a callback URL only when every task of the
    batch has that one (a summary lists every task's title); a batch that ended takes
    no more tasks, and no batch more than ``MAX_BATCH_TASKS``."""
    from db import submissions
    from db.errors import BatchClosed
    from db.models import TaskStatus

    queue.config.webhook_url = HOOK
    mine = "http://127.0.0.1:9/mine"
    batch_id, tasks, _ = await queue.enqueue_many([hooked(0, mine), hooked(1, mine)], now=T0)
    other = (await queue.enqueue(hooked(2, "http://127.0.0.1:9/other"), batch_id=batch_id,
                                 now=T0)).task
    for _ in range(3):
        tid = await claimed(queue)
        if tid == other.id:
            await queue.fail(tid, W1, TaskError("Bad", "no", False), now=T0)
        else:
            await queue.complete(tid, W1, {}, now=T0)
    ends = [r for r in await deliveries(queue) if r["event"] == "batch.finished"]
    assert [r["url"] for r in ends] == [HOOK]  # two callbacks in the batch: neither
    # a cancel/retry cycle of a task of the ended batch does not announce it again
    await queue.retry(other.id, now=T0)
    await queue.complete(await claimed(queue), W1, {}, now=T0)
    assert len([r for r in await deliveries(queue) if r["event"] == "batch.finished"]) == 1
    with pytest.raises(BatchClosed, match="finished"):
        await queue.enqueue(hooked(3), batch_id=batch_id, now=T0)
    # one submitter's batch: its callback hears of the end too
    solo, _, _ = await queue.enqueue_many([hooked(4, mine), hooked(5, mine)], now=T0)
    for _ in range(2):
        await queue.complete(await claimed(queue), W1, {}, now=T0)
    assert sorted(r["url"] for r in await deliveries(queue)
                  if r["event"] == "batch.finished" and r["batch_id"] == solo) == \
        sorted([HOOK, mine])
    monkeypatch.setattr(submissions, "MAX_BATCH_TASKS", 3)
    open_batch, _, _ = await queue.enqueue_many([hooked(6), hooked(7)], now=T0)
    await queue.enqueue(hooked(8), batch_id=open_batch, now=T0)
    with pytest.raises(BatchClosed, match="at most 3"):
        await queue.enqueue(hooked(9), batch_id=open_batch, now=T0)
    task = await Reads(queue.engine).task(other.id)
    assert task is not None and task.status == TaskStatus.COMPLETED


async def test_delivery_attempts_back_off_then_fail_and_show_in_the_events(
        queue: Queue) -> None:
    from db.models import DeliveryStatus

    queue.config.webhook_url = HOOK
    queue.config.webhook_max_attempts = 3
    tid = (await queue.enqueue(hooked(0), now=T0)).task.id
    await queue.complete(await claimed(queue), W1, {}, now=T0)
    [d] = await queue.claim_deliveries("d1", now=T0)
    assert await queue.claim_deliveries("d2", now=T0) == []  # leased
    assert await queue.delivery_result(d, "d1", ok=False, detail="HTTP 500",
                                       now=T0) == DeliveryStatus.PENDING
    assert await queue.claim_deliveries("d1", now=T0) == []  # backing off
    later = T0 + timedelta(seconds=queue.config.webhook_backoff_seconds + 1)
    [d] = await queue.claim_deliveries("d1", now=later)
    assert d.attempts == 2  # counted when claimed
    # a dispatcher that lost its lease records nothing
    assert await queue.delivery_result(d, "someone-else", ok=True, detail="HTTP 200",
                                       now=later) is None
    assert await queue.delivery_result(d, "d1", ok=False, detail="HTTP 500",
                                       now=later) == DeliveryStatus.PENDING
    much_later = later + timedelta(hours=2)
    [d] = await queue.claim_deliveries("d1", now=much_later)
    assert await queue.delivery_result(d, "d1", ok=False, detail="HTTP 500",
                                       now=much_later) == DeliveryStatus.FAILED
    assert await queue.claim_deliveries("d1", now=much_later + timedelta(days=1)) == []
    hooks = [e for e in await Reads(queue.engine).events(tid) if e.event.startswith("webhook")]
    assert [e.event for e in hooks] == ["webhook_retry", "webhook_retry", "webhook_failed"]
    assert hooks[0].detail is not None and hooks[0].detail["receiver"] == "http://127.0.0.1:9"
    assert hooks[0].detail["delivery_id"] == d.id


async def test_a_dispatcher_that_dies_sending_uses_up_the_attempts(queue: Queue) -> None:
    """Claiming is an attempt: a delivery whose sending kills its worker every time (a
    receiver whose answer exhausts memory) is not claimed for ever; once its last
    attempt's lease expires it fails for good, with an event saying why."""
    from db.models import DeliveryStatus

    queue.config.webhook_url = HOOK
    queue.config.webhook_max_attempts = 2
    tid = (await queue.enqueue(hooked(0), now=T0)).task.id
    await queue.complete(await claimed(queue), W1, {}, now=T0)
    [d] = await queue.claim_deliveries("d1", now=T0, lease_seconds=60)
    assert d.attempts == 1  # ... and d1 dies without a word
    after = T0 + timedelta(seconds=61)
    [d] = await queue.claim_deliveries("d2", now=after, lease_seconds=60)
    assert d.attempts == 2 and d.lease_owner == "d2"  # d2 dies too
    assert await queue.claim_deliveries("d3", now=after + timedelta(seconds=30)) == []
    assert await queue.claim_deliveries("d3", now=after + timedelta(seconds=61)) == []
    [row] = await deliveries(queue)
    assert row["status"] == DeliveryStatus.FAILED and "crashed" in row["last_error"]
    hooks = [e for e in await Reads(queue.engine).events(tid) if e.event.startswith("webhook")]
    assert [e.event for e in hooks] == ["webhook_failed"]
    assert hooks[0].detail is not None and hooks[0].detail["attempt"] == 2


async def test_no_webhook_configured_writes_nothing(queue: Queue) -> None:
    await queue.enqueue(hooked(0), now=T0)
    await queue.complete(await claimed(queue), W1, {}, now=T0)
    assert await deliveries(queue) == []


def test_a_fresh_process_snapshots_a_task_before_anything_else() -> None:
    """A worker's first claim is the first Task its process makes: the snapshot must set
    up the ORM's attributes itself (a bare instance would break on the first write)."""
    import subprocess
    import sys

    code = (
        "from db.models import Task\n"
        "from db.transitions import _task\n"
        "class Row:\n"
        "    _mapping = {c.name: None for c in Task.__table__.c} | {'id': 'x', 'status': "
        "'pending'}\n"
        "t = _task(Row())\n"
        "t.status = 'processing'\n"
        "print(t.id, t.status, t.payload)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["x", "processing", "None"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_heartbeat_that_waited_for_the_lock_counts_its_lease_from_then(
        queue: Queue, db_url: str) -> None:
    """Another program holds SQLite's write lock: the heartbeat waits (busy timeout) and
    its lease counts from the write, so the worker's own sweep after it finds nothing
    expired (a 30 s lock and a 10 s lease once requeued a task that was running)."""
    import asyncio
    import sqlite3

    await queue.enqueue(item())
    tid = await claimed(queue, now=datetime.now(UTC))
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    beat = asyncio.ensure_future(queue.beat(W1, [LeaseBeat(tid)]))
    await asyncio.sleep(1.5)
    released = datetime.now(UTC)
    holder.execute("ROLLBACK")
    holder.close()
    assert await beat == (set(), set())
    task = await Reads(queue.engine).task(tid)
    assert task is not None
    assert task.lease_expires_at >= released + timedelta(seconds=queue.config.lease_seconds)
    assert await queue.requeue_expired(
        now=released + timedelta(seconds=queue.config.lease_seconds - 1)) == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_claim_that_waited_for_the_lock_gets_its_whole_lease(
        queue: Queue, db_url: str) -> None:
    """As a heartbeat: a claim that waited out another program's write lock counts its
    lease, its start and its ``claimed`` event from when it wrote, not from the call."""
    import asyncio
    import sqlite3

    await queue.enqueue(item())
    holder = sqlite3.connect(db_url.removeprefix("sqlite:///"), isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    claim = asyncio.ensure_future(queue.claim_next(W1))
    await asyncio.sleep(1.5)
    released = datetime.now(UTC)
    holder.execute("ROLLBACK")
    holder.close()
    [task] = await claim
    assert task.lease_expires_at >= released + timedelta(seconds=queue.config.lease_seconds)
    assert task.started_at >= released
    [event] = [e for e in await Reads(queue.engine).events(task.id)
               if e.event == "claimed"]
    assert event.at >= released


async def test_a_dead_workers_deliveries_are_due_at_once(queue: Queue) -> None:
    """A worker killed while sending leaves its deliveries leased (60 s); the next
    worker on its host finds the process gone and sends them at once, not a minute
    later (the attempt counts, as a lease that ran out does)."""
    from db.models import DeliveryStatus

    queue.config.webhook_url = HOOK
    queue.config.webhook_max_attempts = 2
    await queue.register(W1, "host-a", 111, now=T0)
    for i in range(2):
        await queue.enqueue(hooked(i), now=T0)
        await queue.complete(await claimed(queue), W1, {}, now=T0)
    [first] = await queue.claim_deliveries(W1, limit=1, now=T0, lease_seconds=60)
    assert await queue.claim_deliveries(W2, now=T0 + timedelta(seconds=1)) != []  # the other
    at = T0 + timedelta(seconds=2)
    assert await queue.claim_deliveries(W2, now=at) == []  # W1's: leased for a minute ...
    await queue.requeue_dead_workers("host-a", lambda pid: pid != 111, exclude=W2, now=at)
    [again] = await queue.claim_deliveries(W2, now=at + timedelta(seconds=0.1))  # ... not now
    assert again.id == first.id and again.attempts == 2 and again.lease_owner == W2
    [row] = [r for r in await deliveries(queue) if r["id"] == first.id]
    assert row["status"] == DeliveryStatus.PENDING
