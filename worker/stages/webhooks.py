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

An attempt reads the receiver's status line and nothing more: the body is never read
nor decoded (``Accept-Encoding: identity``; a gzip answer cannot inflate in the worker's
memory), and the whole attempt (connect, TLS, request, status line) has a wall-clock
deadline (``SEND_DEADLINE_S``) however slowly the receiver trickles bytes.  Attempts
run on the dispatcher's own threads, never the pool that downloads and writes results,
one at a time per receiver (scheme, host and port); a batch to one slow receiver ends
within its lease.  No proxy from the environment is used.  Logs and events name the
receiver's origin only: a path or query may hold the receiver's own secret.

Signature: with ``TINGJI_WEBHOOK_SECRET`` set, ``X-Tingji-Signature: sha256=<hex>`` is
HMAC-SHA256 over ``<X-Tingji-Timestamp>.<body>`` (the timestamp in Unix seconds), so a
receiver can refuse both forgeries and old replays.  Messages to a task's own
``callback_url`` are signed with ``TINGJI_CALLBACK_SECRET`` instead (unsigned without
it): their submitter sees them, and must not be able to replay them to the operator's
receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpcore
import httpx

from db.outbox import origin
from db.queue import Queue
from worker.stages import egress

log = logging.getLogger("tingji.webhooks")

SEND_DEADLINE_S = 10.0  # one whole attempt, wall clock
LEASE_S = 60.0
BATCH = 5  # BATCH * SEND_DEADLINE_S < LEASE_S: one receiver's batch, one at a time
IDLE_POLL_S = 1.0
USER_AGENT = "tingji-webhooks/1"


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read, write and TLS handshake waits at most until the
    attempt's deadline (a per-read timeout alone lets a receiver trickle for ever)."""

    def __init__(self, inner: httpcore.NetworkStream, deadline: float) -> None:
        self.inner, self.deadline = inner, deadline

    def _left(self, timeout: float | None) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("the attempt's deadline passed")
        return left if timeout is None else min(timeout, left)

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.inner.read(max_bytes, self._left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self.inner.write(buffer, self._left(timeout))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self.inner.start_tls(ssl_context, server_hostname,
                                                    self._left(timeout)), self.deadline)

    def get_extra_info(self, info: str) -> Any:
        return self.inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self, deadline: float) -> None:
        self.inner, self.deadline = httpcore.SyncBackend(), deadline

    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise httpcore.ConnectTimeout("the attempt's deadline passed")
        stream = self.inner.connect_tcp(host, port, min(timeout or left, left), local_address,
                                        socket_options)
        return _DeadlineStream(stream, self.deadline)

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Any = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("webhooks go to http(s) URLs only")

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def post_status(url: str, body: bytes, headers: dict[str, str], *,
                deadline_s: float = SEND_DEADLINE_S) -> int:
    """POST ``body`` and return the status code: the response's body is never read, the
    whole exchange ends by the deadline (``httpcore.TimeoutException`` otherwise)."""
    target = httpx.URL(url)
    sent = {**headers, "Host": target.netloc.decode("ascii"),
            "Content-Length": str(len(body)), "Accept-Encoding": "identity",
            "Connection": "close"}
    deadline = time.monotonic() + deadline_s
    with httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), max_connections=1,
                                 network_backend=_DeadlineBackend(deadline)) as pool:
        timeouts = {"connect": deadline_s, "read": deadline_s, "write": deadline_s,
                    "pool": deadline_s}
        with pool.stream("POST", str(target), headers=list(sent.items()), content=body,
                         extensions={"timeout": timeouts}) as response:
            return response.status


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
    """Sends the outbox.  The operator's receiver (``operator_url``,
    ``TINGJI_WEBHOOK_URL``) gets messages signed with ``secret`` and may reach the
    networks of ``operator_allow_private``; a task's own ``callback_url`` gets them
    signed with ``callback_secret`` (unsigned without one) under the egress policy of
    media URLs (``allow_private``)."""

    def __init__(self, queue: Queue, owner: str, *, secret: str | None,
                 allow_private: tuple[str, ...] = (), operator_url: str | None = None,
                 operator_allow_private: tuple[str, ...] = (),
                 callback_secret: str | None = None) -> None:
        self.queue = queue
        self.owner = owner
        self.secret = secret
        self.allow_private = allow_private
        self.operator_url = operator_url
        self.operator_allow_private = operator_allow_private
        self.callback_secret = callback_secret
        self.wake = asyncio.Event()
        # its own threads: a slow receiver never holds up downloads or result writes
        self._pool = ThreadPoolExecutor(BATCH, thread_name_prefix="tingji-webhook")
        # one attempt at a time per receiver origin: its lock and how many want it
        self._receivers: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    async def run(self) -> None:
        """Until cancelled: send what is due, then wait for more (``wake`` cuts the
        wait short, e.g. right after a task finished)."""
        try:
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
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _deliver(self, delivery: Any) -> None:
        receiver = origin(delivery.url)
        lock, users = self._receivers.setdefault(receiver, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                ok, detail, permanent = await asyncio.get_running_loop().run_in_executor(
                    self._pool, self._post, delivery)
        finally:
            users[0] -= 1
            if not users[0]:
                del self._receivers[receiver]
        if not ok:
            log.info("webhook %s (%s) to %s: %s", delivery.id, delivery.event, receiver,
                     detail)
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
        operator = self.operator_url is not None and delivery.url == self.operator_url
        secret = self.secret if operator else self.callback_secret
        if secret:
            headers["X-Tingji-Signature"] = signature(secret, timestamp, body)
        allowed = (*self.allow_private, *self.operator_allow_private) if operator \
            else self.allow_private
        with egress.guarded(allowed) as refusals:
            try:
                # no redirects: a receiver that moved must be reconfigured, not followed
                status = post_status(delivery.url, body, headers)
            except httpcore.TimeoutException:
                return False, (f"the receiver did not answer within {SEND_DEADLINE_S:.0f} s"
                               ), False
            except (httpcore.NetworkError, httpcore.ProtocolError, OSError,
                    httpx.InvalidURL, httpcore.UnsupportedProtocol) as exc:
                if refusals.hosts:
                    return False, refusals.message().replace("fetch from", "call"), True
                return False, f"could not reach the receiver ({type(exc).__name__})", False
        if 200 <= status < 300:
            return True, f"HTTP {status}", False
        return False, f"the receiver answered HTTP {status}", False
