"""The webhook outbox: the messages a task's final status calls for, written in the
status change's own transaction (so a crash can lose neither), then leased and sent by
the workers' dispatchers (``worker.stages.webhooks``), each attempt recorded as an
event of the task."""


import uuid
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Row, func, insert, select, update
from sqlalchemy.engine import Connection

from db.engine import hot
from db.models import (
    TERMINAL,
    DeliveryStatus,
    EventType,
)
from db.transitions import D, T, Transitions, utcnow

_INSERT_DELIVERY = hot(insert(D))
MAX_BATCH_BODY = 500  # tasks listed in a batch.finished message


def origin(url: str) -> str:
    """scheme://host[:port] of a receiver: what events show (a path or query may carry
    the receiver's own secret)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _task_body(row: Row[Any]) -> dict[str, Any]:
    """A task as a webhook message carries it."""
    payload = row.payload or {}
    upload = payload.get("upload") or {}
    return {"task_id": row.id, "kind": str(row.kind), "status": str(row.status),
            "title": row.title, "source": payload.get("video_url") or upload.get("filename"),
            "batch_id": row.batch_id, "attempts": row.attempts, "error": row.error,
            "created_at": row.created_at.isoformat(),
            "completed_at": row.completed_at.isoformat() if row.completed_at else None,
            "result_url": f"/api/v1/download/{row.id}"}


class Outbox(Transitions):
    def _announce(self, conn: Connection, row: Row[Any], now: datetime) -> None:
        """Queue the webhook messages a task's final status calls for, in the status
        change's own transaction: one to ``TINGJI_WEBHOOK_URL`` and one to the task's
        ``callback_url``; and, when it was the last live task of its batch, the batch's
        summary, once per batch, to ``TINGJI_WEBHOOK_URL`` and to a callback URL only
        when every task of the batch has that one (a summary lists every task's title)."""
        options = (row.payload or {}).get("options") or {}
        urls = list(dict.fromkeys(u for u in (self.config.webhook_url,
                                              options.get("callback_url")) if u))
        if not urls:
            return
        if len(row) != len(T.c):  # the message carries the whole task
            row = conn.execute(select(T).where(T.c.id == row.id)).one()
        rows = [self._delivery(row, f"task.{row.status}", url, {"task": _task_body(row)}, now)
                for url in urls]
        if row.batch_id:
            ended = self._batch_end(conn, row.batch_id)
            if ended is not None:
                batch, callbacks = ended
                receivers = [u for u in (self.config.webhook_url,
                                         *(callbacks if len(callbacks) == 1 else ())) if u]
                rows += [self._delivery(row, "batch.finished", url, {"batch": batch}, now)
                         for url in dict.fromkeys(receivers)]
        conn.execute(_INSERT_DELIVERY, rows)

    @staticmethod
    def _delivery(row: Row[Any], event: str, url: str, body: dict[str, Any],
                  now: datetime) -> dict[str, Any]:
        delivery_id = str(uuid.uuid4())
        return {"id": delivery_id, "task_id": row.id, "batch_id": row.batch_id,
                "event": event, "url": url,
                "body": {"event": event, "delivery_id": delivery_id,
                         "occurred_at": now.isoformat(), **body},
                "status": DeliveryStatus.PENDING, "attempts": 0, "next_attempt_at": now,
                "lease_owner": None, "lease_expires_at": None, "last_error": None,
                "created_at": now, "delivered_at": None}

    def _batch_end(self, conn: Connection, batch_id: str
                   ) -> tuple[dict[str, Any], set[str | None]] | None:
        """The batch's summary and its tasks' callback URLs if this is its end: none of its
        tasks is live and its end was not announced before.  Every final transition asks;
        only the last reads the batch's tasks (one indexed lookup each before that)."""
        if self._pg:  # two last tasks finishing at once: one of them must see the other
            conn.execute(select(func.pg_advisory_xact_lock(func.hashtext(batch_id))))
        live = conn.execute(select(T.c.id).where(
            T.c.batch_id == batch_id, T.c.status.not_in([*TERMINAL]))
            .limit(1)).first()
        if live is not None:
            return None
        announced = conn.execute(select(D.c.id).where(
            D.c.batch_id == batch_id, D.c.event == "batch.finished").limit(1)).first()
        if announced is not None:  # a retried task finished it again: said once already
            return None
        tasks = conn.execute(
            select(T.c.id, T.c.status, T.c.title, T.c.payload).where(T.c.batch_id == batch_id)
            .order_by(T.c.created_at, T.c.id)).all()
        counts = {str(s): sum(1 for t in tasks if t.status == s) for s in TERMINAL}
        callbacks = {((t.payload or {}).get("options") or {}).get("callback_url")
                     for t in tasks}
        return ({"batch_id": batch_id, "total": len(tasks), **counts,
                 "tasks": [{"task_id": t.id, "status": str(t.status), "title": t.title}
                           for t in tasks[:MAX_BATCH_BODY]]}, callbacks)

    async def claim_deliveries(self, owner: str, *, limit: int = 8, lease_seconds: float = 60,
                               now: datetime | None = None) -> list[Row[Any]]:
        """Lease up to ``limit`` due webhook deliveries for one dispatcher.  Claiming is an
        attempt (``attempts`` counts it now), so a delivery whose sending kills its
        worker (a receiver's answer that exhausts memory, say) uses up its attempts
        across crashes: one whose lease expired on its last attempt fails for good."""
        now = now or utcnow()
        max_attempts = self.config.webhook_max_attempts
        expired = (D.c.status == DeliveryStatus.PENDING, D.c.attempts >= max_attempts,
                   D.c.lease_expires_at.is_not(None), D.c.lease_expires_at < now)
        error = ("its dispatcher stopped during the last attempt (the worker crashed or was "
                 "killed while sending)")
        due = (select(D.c.id)
               .where(D.c.status == DeliveryStatus.PENDING, D.c.next_attempt_at <= now,
                      D.c.attempts < max_attempts,
                      (D.c.lease_expires_at.is_(None)) | (D.c.lease_expires_at < now))
               .order_by(D.c.next_attempt_at, D.c.id).limit(limit))
        due_cte = self._lock(due, skip_locked=True).cte("due").prefix_with(
            "MATERIALIZED", dialect="postgresql")
        stmt = (update(D).where(D.c.id.in_(select(due_cte.c.id)))
                .values(lease_owner=owner, attempts=D.c.attempts + 1,
                        lease_expires_at=now + timedelta(seconds=lease_seconds))
                .returning(*D.c))

        def tx(conn: Connection) -> list[Row[Any]]:
            dead = conn.execute(update(D).where(*expired).values(
                status=DeliveryStatus.FAILED, last_error=error, lease_owner=None,
                lease_expires_at=None).returning(D.c.id, D.c.task_id, D.c.event, D.c.url,
                                                 D.c.attempts)).all()
            self._events(conn, [self._ev(d.task_id, EventType.WEBHOOK_FAILED, now, detail={
                "delivery_id": d.id, "webhook": d.event, "receiver": origin(d.url),
                "attempt": d.attempts, "error": error}) for d in dead])
            return conn.execute(stmt).all()

        return await self._tx(tx)

    async def delivery_result(self, delivery: Row[Any], owner: str, *, ok: bool,
                              detail: str, permanent: bool = False,
                              now: datetime | None = None) -> DeliveryStatus | None:
        """Record one attempt: delivered, retried later with backoff, or failed for good
        (attempts used up, or ``permanent``).  Each outcome is an event of the task.
        None when the lease was lost (another dispatcher owns the delivery now)."""
        now = now or utcnow()
        attempt = delivery.attempts  # counted when it was claimed
        detail_of = {"delivery_id": delivery.id, "webhook": delivery.event,
                     "receiver": origin(delivery.url), "attempt": attempt}
        values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if ok:
            status, event = DeliveryStatus.DELIVERED, EventType.WEBHOOK_DELIVERED
            values |= {"status": status, "delivered_at": now, "last_error": None}
            detail_of["response"] = detail
        elif permanent or attempt >= self.config.webhook_max_attempts:
            status, event = DeliveryStatus.FAILED, EventType.WEBHOOK_FAILED
            values |= {"status": status, "last_error": detail}
            detail_of["error"] = detail
        else:
            status, event = DeliveryStatus.PENDING, EventType.WEBHOOK_RETRY
            when = now + self.backoff(attempt, self.config.webhook_backoff_seconds)
            values |= {"next_attempt_at": when, "last_error": detail}
            detail_of |= {"error": detail, "next_attempt_at": when.isoformat()}

        def tx(conn: Connection) -> DeliveryStatus | None:
            done = conn.execute(update(D).where(
                D.c.id == delivery.id, D.c.lease_owner == owner,
                D.c.status == DeliveryStatus.PENDING).values(**values).returning(D.c.id)).first()
            if done is None:
                return None
            self._events(conn, [self._ev(delivery.task_id, event, now, detail=detail_of)])
            return status

        return await self._tx(tx)
