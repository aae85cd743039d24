"""``tingji service install|uninstall|status``: ``tingji run`` as a systemd service, so the
queue is worked on again after a reboot without anyone logging in.

The unit restarts ``tingji run`` when it fails, except with exit code 3 (the model
cannot be loaded: restarting would only fail again); the ``TINGJI_*`` settings live in
an environment file only its owner can read (it may hold the API token and LLM key).
"""

from __future__ import annotations

import dataclasses
import getpass
import os
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


def render_unit(layout: Layout, settings: Settings, *, run_as: str | None = None) -> str:
    user_line = "" if layout.user or not run_as else f"User={run_as}\n"
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

[Install]
WantedBy={"default.target" if layout.user else "multi-user.target"}
"""


def render_env(settings: Settings, environ: dict[str, str] | None = None) -> str:
    """The ``TINGJI_*`` variables set now, and the data folder, for the service."""
    env = dict(os.environ if environ is None else environ)
    env["TINGJI_DATA_DIR"] = str(settings.data_dir)  # the same data as this user's commands
    lines = ["# tingji's settings for the systemd service (see the README's Settings)"]
    for key in sorted(k for k in env if k.startswith("TINGJI_")):
        value = env[key].replace("\\", "\\\\").replace('"', '\\"')
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
    unit = render_unit(layout, settings, run_as=run_as)
    if dry_run:
        print(f"### {layout.unit}\n{unit}\n### {layout.env_file} (mode 600)\n"
              f"{render_env(settings)}", end="")
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
