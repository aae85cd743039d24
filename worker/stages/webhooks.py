"""The webhook dispatcher: sends what the queue's outbox holds (``webhook_deliveries``,
written in the same transaction as each final status), at least once, never in the way
of transcription.

Each worker runs one beside its claim loop.  A dispatcher leases a few due deliveries
at a time, POSTs each from a thread under the trust boundary's egress policy (a
callback URL is as untrusted as a media URL), and records the attempt: delivered on any
2xx, otherwise retried with exponential backoff (``TINGJI_WEBHOOK_RETRY_SECONDS``
doubling, capped at 10 minutes) until ``TINGJI_WEBHOOK_MAX_ATTEMPTS``.  A dispatcher
killed mid-send leaves its lease to expire, and the delivery goes out again with the
same ``X-Tingji-Delivery`` id, which receivers dedupe on.

Signature: with ``TINGJI_WEBHOOK_SECRET`` set, ``X-Tingji-Signature: sha256=<hex>`` is
HMAC-SHA256 over ``<X-Tingji-Timestamp>.<body>`` (the timestamp in Unix seconds), so a
receiver can refuse both forgeries and old replays.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import httpx

from db.queue import Queue
from worker.stages import egress

log = logging.getLogger("tingji.webhooks")

SEND_TIMEOUT_S = 10.0
LEASE_S = 60.0  # > SEND_TIMEOUT_S: a dispatcher that died mid-send is retried after it
IDLE_POLL_S = 1.0
BATCH = 8
USER_AGENT = "tingji-webhooks/1"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The ``X-Tingji-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, headers: Any, body: bytes, *, tolerance_s: float = 300) -> bool:
    """What a receiver does (the tests use it): the signature matches and is recent."""
    timestamp = headers.get("x-tingji-timestamp", "")
    given = headers.get("x-tingji-signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance_s:
        return False
    return hmac.compare_digest(given, signature(secret, timestamp, body))


class Dispatcher:
    def __init__(self, queue: Queue, owner: str, *, secret: str | None,
                 allow_private: tuple[str, ...] = ()) -> None:
        self.queue = queue
        self.owner = owner
        self.secret = secret
        self.allow_private = allow_private
        self.wake = asyncio.Event()

    async def run(self) -> None:
        """Until cancelled: send what is due, then wait for more (``wake`` cuts the
        wait short, e.g. right after a task finished)."""
        while True:
            try:
                due = await self.queue.claim_deliveries(self.owner, limit=BATCH,
                                                        lease_seconds=LEASE_S)
            except Exception as exc:  # noqa: BLE001  (a database hiccup: try again later)
                log.warning("webhook dispatcher: %s", exc)
                due = []
            if due:
                await asyncio.gather(*(self._deliver(d) for d in due))
                continue
            self.wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_POLL_S):
                    await self.wake.wait()

    async def _deliver(self, delivery: Any) -> None:
        ok, detail, permanent = await asyncio.to_thread(self._post, delivery)
        if not ok:
            log.info("webhook %s (%s) to %s: %s", delivery.id, delivery.event,
                     delivery.url[:200], detail)
        try:
            await self.queue.delivery_result(delivery, self.owner, ok=ok, detail=detail,
                                             permanent=permanent)
        except Exception as exc:  # noqa: BLE001  (the lease expires; it goes out again)
            log.warning("webhook %s: could not record the attempt: %s", delivery.id, exc)

    def _post(self, delivery: Any) -> tuple[bool, str, bool]:
        """One attempt, on a thread: (delivered, what happened, give up now)."""
        body = json.dumps(delivery.body, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = str(int(time.time()))
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
                   "X-Tingji-Event": delivery.event, "X-Tingji-Delivery": delivery.id,
                   "X-Tingji-Timestamp": timestamp}
        if self.secret:
            headers["X-Tingji-Signature"] = signature(self.secret, timestamp, body)
        with egress.guarded(self.allow_private) as refusals:
            try:
                # no redirects: a receiver that moved must be reconfigured, not followed
                r = httpx.post(delivery.url, content=body, headers=headers,
                               timeout=SEND_TIMEOUT_S, follow_redirects=False)
            except httpx.HTTPError as exc:
                if refusals.hosts:
                    return False, refusals.message().replace("fetch from", "call"), True
                return False, f"could not reach the receiver ({type(exc).__name__})", False
        if 200 <= r.status_code < 300:
            return True, f"HTTP {r.status_code}", False
        return False, f"the receiver answered HTTP {r.status_code}", False
