"""The egress policy's guard (``worker.stages.egress.guarded``) on this thread's name
resolution: refusals, allowed networks, nesting, and other threads left alone."""

from __future__ import annotations

import socket
import threading

import pytest

from worker.stages.egress import EgressRefused, guarded


def resolves(host: str = "127.0.0.1") -> bool:
    try:
        socket.getaddrinfo(host, 80)
    except EgressRefused:
        return False
    return True


def test_loopback_refused_inside_the_guard_only() -> None:
    assert resolves()
    with guarded() as refusals:
        assert not resolves()
        assert refusals.hosts == [("127.0.0.1", "loopback")]
        assert "TINGJI_ALLOW_PRIVATE_URLS" in refusals.message()
    assert resolves()


def test_allowed_networks_pass() -> None:
    with guarded(("127.0.0.0/8",)) as refusals:
        assert resolves() and not refusals.hosts
        assert not resolves("::1")  # not in the allowed network


@pytest.mark.parametrize("inner", [(), ("127.0.0.0/8",)])
def test_blocks_nest_and_restore_the_outer_policy(inner: tuple[str, ...]) -> None:
    with guarded() as outer:
        with guarded(inner):
            assert resolves() == bool(inner)
        assert not resolves(), "leaving the inner block must not lift the outer policy"
        assert outer.hosts[-1] == ("127.0.0.1", "loopback")
    assert resolves()


def test_other_threads_are_not_guarded() -> None:
    seen: list[bool] = []
    with guarded():
        t = threading.Thread(target=lambda: seen.append(resolves()))
        t.start()
        t.join()
        assert not resolves()
    assert seen == [True]
