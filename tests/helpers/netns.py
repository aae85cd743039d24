"""Other machines for scale-out tests: network namespaces, each with its own loopback,
host name and data folder, reaching this machine's services only through a veth link.

Each host gets a veth pair (10.231.N.1 here, 10.231.N.2 there) and, on this side, a
``socat`` relay per service from 10.231.N.1:port to 127.0.0.1:port, so PostgreSQL, the
API and the media server keep listening on loopback only.  Inside, the services' names
(``db.tingji.test``, ...) resolve to 10.231.N.1 through ``/etc/netns/NAME/hosts``.
Everything is removed on exit; only the test's own veth links carry addresses.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

NAMES = ("db.tingji.test", "api.tingji.test", "media.tingji.test")


def unavailable() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [t for t in ("ip", "unshare", "socat") if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    probe = f"tjprobe{os.getpid() % 100000}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, "ip", *args] if ns else ["ip", *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


@dataclass
class Host:
    name: str  # its host name (and the namespace's)
    gateway: str  # this machine, as the host sees it
    relays: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the host: its namespace, and its own host name."""
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "sh", "-c",
                f'hostname {self.name} && exec "$@"', "sh", *argv]


@contextmanager
def hosts(count: int, ports: list[int]) -> Iterator[list[Host]]:
    """``count`` hosts that reach 127.0.0.1's ``ports`` under the names in NAMES.  Stop
    what runs inside them before leaving: a process cut off from its link keeps its
    relayed connections (and their locks) open."""
    tag = os.getpid() % 10000
    made: list[Host] = []
    try:
        for n in range(1, count + 1):
            name, here, there = f"tj{tag}h{n}", f"tj{tag}a{n}", f"tj{tag}b{n}"
            gateway, address = f"10.231.{n}.1", f"10.231.{n}.2"
            _ip("netns", "add", name)
            host = Host(name, gateway)
            made.append(host)
            _ip("link", "add", here, "type", "veth", "peer", "name", there)
            _ip("link", "set", there, "netns", name)
            _ip("addr", "add", f"{gateway}/30", "dev", here)
            _ip("link", "set", here, "up")
            _ip("addr", "add", f"{address}/30", "dev", there, ns=name)
            _ip("link", "set", there, "up", ns=name)
            _ip("link", "set", "lo", "up", ns=name)
            etc = Path("/etc/netns") / name
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{gateway} {' '.join(NAMES)}\n")
            for port in ports:
                # its own process group: the children it forks per connection go with it
                host.relays.append(subprocess.Popen(
                    ["socat", f"TCP-LISTEN:{port},bind={gateway},fork,reuseaddr",
                     f"TCP:127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL, start_new_session=True))
        yield made
    finally:
        for host in made:
            for relay in host.relays:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(relay.pid, signal.SIGKILL)
                relay.wait()
            n = host.name.rsplit("h", 1)[1]
            subprocess.run(["ip", "link", "del", f"tj{tag}a{n}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", host.name], capture_output=True)
            shutil.rmtree(Path("/etc/netns") / host.name, ignore_errors=True)
