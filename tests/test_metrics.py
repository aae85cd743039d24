"""``GET /metrics``: Prometheus text read from the database, parsed back with
``prometheus_client``'s own parser and checked against the database."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from db.engine import make_engine
from db.models import Stage
from db.queue import Queue, TaskError
from db.reads import Reads
from server.routes.metrics import Snapshot
from tests.helpers.stack import Stack
from tests.test_queue import T0, W1, item

TOKEN = "metrics-token"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


async def test_the_figures_on_both_backends(queue: Queue, db_url: str) -> None:
    reads = Reads(make_engine(db_url))
    await queue.register(W1, "host-a", 123, now=T0)
    await queue.record_model_load(W1, "paraformer-zh", now=T0)
    for n, (audio, fetch_s, transcribe_s, tokens) in enumerate(
            [(60.0, 0.4, 3.0, (100, 80)), (600.0, 2.5, 45.0, (0, 0))]):
        await queue.enqueue(item(n), now=T0)
        tid = (await queue.claim_next(W1, now=T0))[0].id
        await queue.checkpoint(tid, W1, Stage.FETCH, {}, seconds=fetch_s, now=T0)
        await queue.checkpoint(tid, W1, Stage.TRANSCRIBE, {}, seconds=transcribe_s, now=T0)
        await queue.complete(tid, W1, {"text": "好", "duration_s": audio,
                                       "llm_tokens_in": tokens[0],
                                       "llm_tokens_out": tokens[1]}, now=T0)
    for n, retryable in ((7, False), (8, True)):  # failed; pending again after a backoff
        await queue.enqueue(item(n), now=T0)
        tid = (await queue.claim_next(W1, now=T0))[0].id
        await queue.fail(tid, W1, TaskError("media", "not audio", retryable=retryable),
                         now=T0 + timedelta(minutes=1))
    await queue.enqueue(item(9), now=T0 + timedelta(seconds=30))  # pending and due
    now = T0 + timedelta(seconds=65)  # task 8 backs off until 10 s after its failure
    try:
        m = await reads.metrics(now=now)
    finally:
        await reads.engine.dispose()
    assert m.counts == {"pending": 2, "processing": 0, "completed": 2, "failed": 1,
                        "cancelled": 0}
    assert m.runnable == 1 and m.oldest_pending_at == T0  # task 8, created first
    assert m.audio_seconds == 660.0 and m.transcribe_seconds == 48.0
    assert (m.llm_tokens_in, m.llm_tokens_out) == (100, 80)
    assert m.stages["transcribe"].count == 2 and m.stages["transcribe"].total == 48.0
    assert m.stages["fetch"].buckets[:3] == (1, 1, 1)  # 0.4 s <= 0.5; 2.5 s only from 5 s
    assert m.stages["fetch"].buckets[3] == 2
    assert [w.model_loads for w in m.workers] == [1]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(m))
    got = samples(generate_latest(registry).decode())
    assert got[("tingji_tasks", (("status", "completed"),))] == 2
    assert got[("tingji_queue_depth", ())] == 1
    assert got[("tingji_audio_seconds_total", ())] == 660.0
    assert got[("tingji_realtime_factor", ())] == 660.0 / 48.0
    assert got[("tingji_llm_tokens_total", (("direction", "in"),))] == 100
    assert got[("tingji_stage_duration_seconds_count", (("stage", "transcribe"),))] == 2
    assert got[("tingji_stage_duration_seconds_bucket", (("le", "60.0"),
                                                         ("stage", "transcribe")))] == 2
    assert got[("tingji_stage_duration_seconds_bucket", (("le", "5.0"),
                                                         ("stage", "transcribe")))] == 1
    assert got[("tingji_worker_model_loads", (("hostname", "host-a"), ("worker_id", W1)))] == 1


def test_a_scrape_after_real_tasks_matches_the_database(
        stack_factory: Callable[..., Stack], media: dict[str, Path]) -> None:
    stack = stack_factory(TINGJI_API_TOKEN=TOKEN)
    stack.http.headers["Authorization"] = f"Bearer {TOKEN}"
    worker = stack.worker()
    done = [stack.upload(media["speech"]) for _ in range(2)]
    bad = stack.upload(media["text_mp3"])
    for tid in done:
        assert stack.finished(tid)["status"] == "completed"
    assert stack.finished(bad)["status"] == "failed"
    worker.stop()
    waiting = stack.upload(media["speech"])  # no worker now: it stays pending

    assert stack.http.get("/metrics", headers={"Authorization": ""}).status_code == 401
    resp = stack.http.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    got = samples(resp.text)

    db = sqlite3.connect(stack.data / "tingji.db")
    by_status = dict(db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall())
    for status in ("pending", "processing", "completed", "failed", "cancelled"):
        assert got[("tingji_tasks", (("status", status),))] == by_status.get(status, 0)
    assert by_status == {"completed": 2, "failed": 1, "pending": 1}
    assert got[("tingji_queue_depth", ())] == 1
    assert got[("tingji_oldest_pending_age_seconds", ())] >= 0
    audio = db.execute("SELECT sum(json_extract(result, '$.duration_s')) FROM tasks "
                       "WHERE status = 'completed'").fetchone()[0]
    assert abs(got[("tingji_audio_seconds_total", ())] - audio) < 1e-6
    for stage, n, total in db.execute("SELECT stage, count(*), sum(seconds) FROM task_stages "
                                      "WHERE seconds IS NOT NULL GROUP BY stage"):
        assert got[("tingji_stage_duration_seconds_count", (("stage", stage),))] == n
        assert abs(got[("tingji_stage_duration_seconds_sum", (("stage", stage),))] - total) < 1e-6
    assert got[("tingji_realtime_factor", ())] > 0
    assert got[("tingji_workers", ())] == 0  # the worker stopped cleanly
    assert stack.task(waiting)["status"] == "pending"
    db.close()
