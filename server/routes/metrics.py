"""``GET /metrics``: the queue in Prometheus' text format.

Everything is read from the database at scrape time, so one scrape of any API process
covers every worker on every machine sharing the queue.  Protected by the API token
like ``/api`` when one is set.
"""

from __future__ import annotations

from collections.abc import Iterator

from litestar import Response, get
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from db.queue import utcnow
from db.reads import STAGE_BUCKETS, QueueMetrics
from server.deps import ReadsDep


class Snapshot(Collector):
    """One scrape's metric families, from one ``QueueMetrics`` reading."""

    def __init__(self, m: QueueMetrics) -> None:
        self.m = m

    def collect(self) -> Iterator[Metric]:
        m, now = self.m, utcnow()
        tasks = GaugeMetricFamily("tingji_tasks", "Tasks by status", labels=["status"])
        for status, n in sorted(m.counts.items()):
            tasks.add_metric([status], n)
        yield tasks
        yield GaugeMetricFamily("tingji_queue_depth",
                                "Pending tasks due to run now (not waiting for a retry)",
                                value=m.runnable)
        age = (now - m.oldest_pending_at).total_seconds() if m.oldest_pending_at else 0.0
        yield GaugeMetricFamily("tingji_oldest_pending_age_seconds",
                                "Age of the oldest pending task (0: none pending)",
                                value=max(0.0, age))
        stages = HistogramMetricFamily("tingji_stage_duration_seconds",
                                       "Duration of each finished pipeline stage",
                                       labels=["stage"])
        for stage, t in sorted(m.stages.items()):
            stages.add_metric([stage], [*((str(float(b)), n) for b, n in
                                          zip(STAGE_BUCKETS, t.buckets, strict=True)),
                                        ("+Inf", t.count)], sum_value=t.total)
        yield stages
        yield CounterMetricFamily("tingji_audio_seconds",
                                  "Seconds of audio in completed tasks",
                                  value=m.audio_seconds)
        yield CounterMetricFamily("tingji_transcribe_seconds",
                                  "Seconds the transcribe stage took for completed tasks",
                                  value=m.transcribe_seconds)
        yield GaugeMetricFamily("tingji_realtime_factor",
                                "Audio seconds per second of transcription, over completed "
                                "tasks (x realtime; 0: none yet)",
                                value=m.audio_seconds / m.transcribe_seconds
                                if m.transcribe_seconds > 0 else 0.0)
        tokens = CounterMetricFamily("tingji_llm_tokens", "LLM tokens used by completed tasks",
                                     labels=["direction"])
        tokens.add_metric(["in"], m.llm_tokens_in)
        tokens.add_metric(["out"], m.llm_tokens_out)
        yield tokens
        beat = GaugeMetricFamily("tingji_worker_heartbeat_age_seconds",
                                 "Seconds since each running worker's last heartbeat",
                                 labels=["worker_id", "hostname"])
        loads = GaugeMetricFamily("tingji_worker_model_loads",
                                  "Times each running worker has loaded its ASR model",
                                  labels=["worker_id", "hostname"])
        for w in m.workers:
            beat.add_metric([w.id, w.hostname], max(0.0, (now - w.heartbeat_at).total_seconds()))
            loads.add_metric([w.id, w.hostname], w.model_loads)
        yield beat
        yield loads
        yield GaugeMetricFamily("tingji_workers", "Running workers (not stopped)",
                                value=len(m.workers))


@get("/metrics", summary="Prometheus metrics (read from the database)", media_type="text/plain")
async def metrics(reads: ReadsDep) -> Response[bytes]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Snapshot(await reads.metrics(now=utcnow())))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


handlers = [metrics]
