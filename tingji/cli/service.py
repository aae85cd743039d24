"""``tingji service install|uninstall|status``: ``tingji run`` as a systemd service, so the
queue is worked on again after a reboot without anyone logging in.

The unit restarts ``tingji run`` when it fails, except with exit code 3 (the model
cannot be loaded: restarting would only fail again); the ``TINGJI_*`` settings live in
an environment file only its owner can read (it may hold the API token and LLM key).

It never runs as root, and systemd fences it in: yt-dlp and ffmpeg read hostile input
under it, so the system is read-only to it but for the data folder and the model and
compile caches, it gets no new privileges, a private /tmp and the network families it
needs.  ``--dry-run`` shows the files with secrets masked.
"""

from __future__ import annotations

import dataclasses
import getpass
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tingji.settings import Settings
from tingji.supervise import EXIT_FATAL

NAME = "tingji.service"
README = Path(__file__).resolve().parent.parent / "README.md"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a user or a system installation puts its files."""

    user: bool
    unit: Path
    env_file: Path

    @classmethod
    def of(cls, user: bool) -> Layout:
        if user:
            config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
            return cls(True, config / "systemd" / "user" / NAME, config / "tingji" / "env")
        return cls(False, Path("/etc/systemd/system") / NAME, Path("/etc/tingji/env"))

    def systemctl(self, *args: str) -> list[str]:
        return ["systemctl", *(["--user"] if self.user else []), *args]


def executable() -> Path:
    """The ``tingji`` command of this installation (its virtual environment's)."""
    exe = Path(sys.executable).with_name("tingji")
    return exe if exe.exists() else Path(shutil.which("tingji") or exe)


def sandbox(layout: Layout, settings: Settings, home: Path) -> str:
    """systemd's fences.  A user manager applies only those that need no namespaces."""
    common = ("NoNewPrivileges=yes\n"
              "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK\n"
              "RestrictRealtime=yes\nLockPersonality=yes\n")
    if layout.user:
        return common
    return common + (
        "ProtectSystem=strict\nProtectHome=read-only\nPrivateTmp=yes\n"
        f"ReadWritePaths={settings.data_dir}\n"
        f"ReadWritePaths=-{home / '.cache'}\n"  # the hub's model cache (- : if it exists)
        "ProtectKernelTunables=yes\nProtectKernelModules=yes\nProtectKernelLogs=yes\n"
        "ProtectControlGroups=yes\nProtectClock=yes\nRestrictSUIDSGID=yes\n"
        "RestrictNamespaces=yes\nSystemCallArchitectures=native\n")


def render_unit(layout: Layout, settings: Settings, *, run_as: str | None = None) -> str:
    user_line = "" if layout.user or not run_as else f"User={run_as}\n"
    home = Path(os.path.expanduser(f"~{run_as}")) if run_as else Path.home()
    return f"""\
[Unit]
Description=tingji (听记) transcription service: the API and one worker
Documentation=file://{README}
After=network-online.target postgresql.service
Wants=network-online.target

[Service]
Type=simple
{user_line}EnvironmentFile={layout.env_file}
WorkingDirectory={settings.data_dir}
ExecStart={executable()} run
# a failed start or a crash is retried; exit code {EXIT_FATAL} (the model cannot load) is not
Restart=on-failure
RestartSec=10
RestartPreventExitStatus={EXIT_FATAL}
# SIGTERM lets the worker finish or hand back its tasks (TINGJI_DRAIN_SECONDS)
TimeoutStopSec={int(settings.drain_seconds) + 60}
KillMode=mixed
# numba's compiled loops are cached with the data, not beside the (read-only) code
Environment=NUMBA_CACHE_DIR={settings.data_dir / "cache" / "numba"}
{sandbox(layout, settings, home)}
[Install]
WantedBy={"default.target" if layout.user else "multi-user.target"}
"""


_SECRET_NAME = re.compile(r"TOKEN|KEY|SECRET|PASSWORD")
_URL_PASSWORD = re.compile(r"(//[^/:@\s]*:)[^@/\s]*@")


def masked(key: str, value: str) -> str:
    """What ``--dry-run`` shows of a setting: no token, key, secret or URL password."""
    if _SECRET_NAME.search(key):
        return "********" if value else value
    return _URL_PASSWORD.sub(r"\1********@", value)


def render_env(settings: Settings, environ: dict[str, str] | None = None, *,
               mask: bool = False) -> str:
    """The ``TINGJI_*`` variables set now, and the data folder, for the service."""
    env = dict(os.environ if environ is None else environ)
    env["TINGJI_DATA_DIR"] = str(settings.data_dir)  # the same data as this user's commands
    lines = ["# tingji's settings for the systemd service (see the README's Settings)"]
    for key in sorted(k for k in env if k.startswith("TINGJI_")):
        raw = masked(key, env[key]) if mask else env[key]
        value = raw.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{key}="{value}"')
    return "\n".join(lines) + "\n"


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through O_CREAT


def install(settings: Settings, *, user: bool, dry_run: bool = False) -> int:
    layout = Layout.of(user)
    run_as = os.environ.get("SUDO_USER") or getpass.getuser()
    if not user and run_as != getpass.getuser() and not os.environ.get("TINGJI_DATA_DIR"):
        # sudo: the service runs as the user who asked, on that user's data
        home = Path(os.path.expanduser(f"~{run_as}"))
        settings = dataclasses.replace(settings, data_dir=home / ".local" / "share" / "tingji")
    if (run_as == "root" and not user) or (user and os.geteuid() == 0):
        print("tingji service install: the service would run as root, and yt-dlp and ffmpeg "
              "handle untrusted input under it; run this from your own account (with sudo "
              "for a system service: it then runs as you), or as a user made for it "
              "(sudo useradd --system --create-home tingji; sudo -u tingji tingji service "
              "install --user)", file=sys.stderr)
        return 2
    unit = render_unit(layout, settings, run_as=run_as)
    if dry_run:
        print(f"### {layout.unit}\n{unit}\n### {layout.env_file} (mode 600, secrets "
              f"masked here)\n{render_env(settings, mask=True)}", end="")
        return 0
    if not user and os.geteuid() != 0:
        print("tingji service install: a system service needs root (sudo), or use --user",
              file=sys.stderr)
        return 2
    if not settings.data_dir.exists():
        settings.data_dir.mkdir(parents=True)
        if not user:
            shutil.chown(settings.data_dir, run_as)
    _write_private(layout.env_file, render_env(settings))
    layout.unit.parent.mkdir(parents=True, exist_ok=True)
    layout.unit.write_text(unit, encoding="utf-8")
    print(f"wrote {layout.unit} and {layout.env_file} (mode 600)")
    for args in (("daemon-reload",), ("enable", "--now", NAME)):
        done = subprocess.run(layout.systemctl(*args), capture_output=True, text=True)
        if done.returncode != 0:
            print(f"tingji service install: {' '.join(layout.systemctl(*args))} failed: "
                  f"{done.stderr.strip()}", file=sys.stderr)
            return 1
    print(f"enabled and started {NAME}; `tingji service status` shows it")
    if user:
        print(f"for it to start at boot without a login: sudo loginctl enable-linger {run_as}")
    return 0


def uninstall(*, user: bool) -> int:
    layout = Layout.of(user)
    subprocess.run(layout.systemctl("disable", "--now", NAME), capture_output=True)
    removed = [p for p in (layout.unit, layout.env_file) if p.exists()]
    for p in removed:
        p.unlink()
    subprocess.run(layout.systemctl("daemon-reload"), capture_output=True)
    print(f"stopped and removed {NAME}" + (f" ({', '.join(map(str, removed))})"
                                           if removed else " (it was not installed)"))
    print("the data folder and its tasks are kept")
    return 0


def status(*, user: bool) -> int:
    layout = Layout.of(user)
    if not layout.unit.exists():
        print(f"{NAME} is not installed ({layout.unit}); `tingji service install"
              f"{' --user' if user else ''}` installs it")
        return 3
    return subprocess.run(layout.systemctl("status", "--no-pager", NAME)).returncode
