"""Installing and operating tingji: one data home, --version and --help."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.procs import TINGJI, clean_env, free_port, start
from tingji import __version__


def _tingji(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([TINGJI, *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_commands_run_anywhere_share_one_data_home(tmp_path: Path) -> None:
    home = tmp_path / "xdg"
    env = clean_env(XDG_DATA_HOME=str(home))  # and no TINGJI_DATA_DIR
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    port = free_port()
    server = start(["serve", "--port", str(port)], env, tmp_path / "serve.log", cwd=a)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        tid = httpx.post(url + "/api/v1/process/bilibili",
                         json={"video_url": "https://example.com/a.mp4"}).json()["task_id"]
        assert httpx.post(f"{url}/api/v1/task/{tid}/cancel").json()["status"] == "cancelled"
    finally:
        server.stop()
    # another command, from another folder, finds that task in the same database
    pruned = _tingji("prune", "--older-than", "0", env=env, cwd=b)
    assert pruned.returncode == 0 and "pruned 1 " in pruned.stdout, pruned.stderr
    assert (home / "tingji" / "tingji.db").is_file()
    assert not (a / "data").exists() and not (b / "data").exists()
    current = _tingji("db", "current", env=env, cwd=c)
    assert "up to date" in current.stdout and current.stderr == ""

    # a ./data/tingji.db from an older tingji: said once, with how to keep it
    (c / "data").mkdir()
    (c / "data" / "tingji.db").write_bytes(b"")
    first = _tingji("db", "current", env=env, cwd=c)
    assert "the data now lives in" in first.stderr and \
        f"TINGJI_DATA_DIR={c / 'data'}" in first.stderr
    assert _tingji("db", "current", env=env, cwd=c).stderr == ""
    kept = _tingji("db", "current", env={**env, "TINGJI_DATA_DIR": str(c / "data")}, cwd=b)
    assert kept.returncode == 0 and "empty (no revision)" in kept.stdout


def test_version_and_help_name_examples_and_settings() -> None:
    env = clean_env()
    out = _tingji("--version", env=env, cwd=Path.cwd())
    assert out.returncode == 0 and out.stdout.strip() == f"tingji {__version__}"
    top = _tingji("--help", env=env, cwd=Path.cwd()).stdout
    assert "examples:" in top and "TINGJI_DATA_DIR" in top and "TINGJI_URL" in top
    submit = _tingji("submit", "--help", env=env, cwd=Path.cwd()).stdout
    assert "tingji submit talk.mp3 --wait" in submit and "TINGJI_API_TOKEN" in submit
    prune = _tingji("prune", "--help", env=env, cwd=Path.cwd()).stdout
    assert "--older-than DAYS" in prune and "twelve hours" in prune


def _lock(path: Path) -> tuple[dict[str, str], set[str]]:
    """{name: version} of a pip-compile lock, and the names it says pyproject asked for."""
    from packaging.utils import canonicalize_name

    pins: dict[str, str] = {}
    direct: set[str] = set()
    name = ""
    for line in path.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            spec = line.split(" ")[0]
            name, version = spec.split("==")
            name = canonicalize_name(name)
            pins[name] = version
            assert "--hash=sha256:" in path.read_text().split(line, 1)[1].split("\n", 2)[1], \
                f"{path.name}: {spec} has no hash"
        elif "tingji (pyproject.toml)" in line and name:
            direct.add(name)
    return pins, direct


def test_the_locks_agree_with_pyproject() -> None:
    """Change a dependency in pyproject.toml without running scripts/lock.sh and this
    fails: every requirement is pinned, within its range, and nothing else is direct."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    root = Path(__file__).resolve().parent.parent
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for lock, groups in (("requirements.lock", ["worker"]),
                         ("requirements-test.lock", ["worker", "test", "onnx"])):
        pins, direct = _lock(root / lock)
        wanted = [Requirement(r) for r in project["dependencies"]] + \
            [Requirement(r) for g in groups for r in extras[g]]
        names = set()
        for req in wanted:
            name = canonicalize_name(req.name)
            if name == "torch":  # installed first by scripts/setup.sh, never locked
                assert name not in pins
                continue
            names.add(name)
            assert name in pins, f"{lock}: {req} is not locked; run scripts/lock.sh"
            assert req.specifier.contains(pins[name], prereleases=True), \
                f"{lock}: {name}=={pins[name]} is outside {req}; run scripts/lock.sh"
        assert direct == names, f"{lock}: run scripts/lock.sh ({direct ^ names})"
    test_pins, _ = _lock(root / "requirements-test.lock")
    service_pins, _ = _lock(root / "requirements.lock")
    assert {n: v for n, v in test_pins.items() if n in service_pins} == service_pins


# ------------------------------------------------------------------ doctor
def _doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, str]]:
    """Exit code, and {check name: its line} of `tingji doctor`."""
    done = subprocess.run([TINGJI, "doctor", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    lines = {}
    for line in done.stdout.splitlines():
        if line.startswith("["):
            lines[line[7:].split(":", 1)[0]] = line
    return done.returncode, lines


def test_doctor_reports_each_problem_with_its_fix(tmp_path: Path,
                                                  tiny_models: dict[str, str]) -> None:
    import shutil

    from db import migrate

    healthy = clean_env(TINGJI_DATA_DIR=str(tmp_path / "data"),
                        TINGJI_ASR_MODEL=tiny_models["asr"], TINGJI_VAD_MODEL=tiny_models["vad"],
                        TINGJI_PUNC_MODEL=tiny_models["punc"],
                        TINGJI_SPK_MODEL=tiny_models["spk"])
    (tmp_path / "data").mkdir()
    migrate.upgrade(f"sqlite:///{tmp_path / 'data' / 'tingji.db'}")
    code, lines = _doctor(healthy)
    assert code == 0, "\n".join(lines.values())
    for name in ("python", "packages", "ffmpeg", "model ASR", "model speaker", "database",
                 "disk", "api"):
        assert lines[name].startswith("[ ok ]"), lines[name]
    assert lines["llm"].startswith("[note]") and "not polished" in lines["llm"]

    # a model folder missing its weights, no ffmpeg anywhere, a database two migrations
    # behind, a public bind without a token, an LLM that does not answer
    broken = tmp_path / "asr-broken"
    shutil.copytree(tiny_models["asr"], broken)
    (broken / "model.pt").unlink()
    stale = tmp_path / "stale.db"
    migrate.upgrade(f"sqlite:///{stale}", "0005")
    hide = tmp_path / "hide"
    (hide / "imageio_ffmpeg").mkdir(parents=True)
    (hide / "imageio_ffmpeg" / "__init__.py").write_text("raise ImportError('hidden')\n")
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    sick = {**healthy, "TINGJI_ASR_MODEL": str(broken), "TINGJI_VAD_MODEL": "fsmn-vad",
            "TINGJI_DATABASE_URL": f"sqlite:///{stale}", "TINGJI_HOST": "0.0.0.0",
            "TINGJI_LLM_BASE_URL": "http://127.0.0.1:9/v1", "TINGJI_LLM_MODEL": "deepseek-chat",
            "PATH": str(empty_path), "PYTHONPATH": str(hide)}
    code, lines = _doctor(sick)
    assert code == 1
    assert lines["model ASR"].startswith("[FAIL]") and "model.pt" in lines["model ASR"]
    assert "fix: copy the whole model folder again" in lines["model ASR"]
    assert "fsmn-vad -> iic/speech_fsmn_vad" in lines["model VAD"]  # a hub id, not cached
    assert lines["ffmpeg"].startswith("[FAIL]") and "fix: apt install ffmpeg" in lines["ffmpeg"]
    behind = f"at revision 0005, behind {migrate.head_revision()}"
    assert lines["database"].startswith("[FAIL]") and behind in lines["database"]
    assert "fix: tingji db upgrade" in lines["database"]
    assert lines["api"].startswith("[FAIL]") and "fix: set TINGJI_API_TOKEN" in lines["api"]
    assert lines["llm"].startswith("[FAIL]") and "cannot connect" in lines["llm"]


def test_models_download_makes_folders_to_carry(tmp_path: Path,
                                                tiny_models: dict[str, str]) -> None:
    env = clean_env(TINGJI_DATA_DIR=str(tmp_path / "data"),
                    TINGJI_ASR_MODEL=tiny_models["asr"], TINGJI_VAD_MODEL=tiny_models["vad"],
                    TINGJI_PUNC_MODEL=tiny_models["punc"], TINGJI_SPK_MODEL="")
    carry = tmp_path / "carry"
    done = subprocess.run([TINGJI, "models", "download", "--to", str(carry)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    settings = dict(line.split("=", 1) for line in done.stdout.splitlines()
                    if line.startswith("TINGJI_"))
    assert settings == {"TINGJI_ASR_MODEL": str(carry / "asr"),
                        "TINGJI_VAD_MODEL": str(carry / "vad"),
                        "TINGJI_PUNC_MODEL": str(carry / "punc")}
    code, lines = _doctor({**env, **settings})
    assert lines["model ASR"].startswith("[ ok ]") and str(carry) in lines["model ASR"]
    assert lines["model speaker"].startswith("[note]")


# ------------------------------------------------------------------ systemd
def test_the_systemd_unit(tmp_path: Path) -> None:
    """A system unit for the user who ran sudo: restarts on failure but not on a model
    that cannot load, fenced in by systemd's sandboxing, its secrets masked in the dry
    run; never root."""
    import os
    import pwd
    import shutil

    someone = next(p.pw_name for p in pwd.getpwall() if p.pw_uid not in (0, 65534))
    env = clean_env(TINGJI_DATA_DIR=str(tmp_path), TINGJI_API_TOKEN='se"cret',
                    TINGJI_DATABASE_URL="postgresql://tingji:hunter2@127.0.0.1/tingji",
                    XDG_CONFIG_HOME=str(tmp_path / "config"), SUDO_USER=someone)
    shown = subprocess.run([TINGJI, "service", "install", "--dry-run"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    unit = shown.stdout.split("\n### ", 1)[0].split("\n", 1)[1]
    assert "Restart=on-failure" in unit and "RestartPreventExitStatus=3" in unit
    assert f"User={someone}" in unit and "EnvironmentFile=/etc/tingji/env" in unit
    for fence in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=read-only",
                  "PrivateTmp=yes", f"ReadWritePaths={tmp_path}", "RestrictAddressFamilies=",
                  f"NUMBA_CACHE_DIR={tmp_path / 'cache' / 'numba'}"):
        assert fence in unit, fence
    assert 'TINGJI_API_TOKEN="********"' in shown.stdout and "se" not in \
        shown.stdout.split("TINGJI_API_TOKEN=", 1)[1].split("\n", 1)[0]
    assert "hunter2" not in shown.stdout and "tingji:********@127.0.0.1" in shown.stdout
    assert f'TINGJI_DATA_DIR="{tmp_path}"' in shown.stdout
    # the user's own unit: the fences a user manager can apply
    user_unit = subprocess.run([TINGJI, "service", "install", "--user", "--dry-run"],
                               env={**env, "SUDO_USER": ""}, capture_output=True, text=True,
                               timeout=60)
    if os.geteuid() == 0:  # root's own user manager would run it as root: refused
        assert user_unit.returncode == 2 and "run as root" in user_unit.stderr
    else:
        assert "NoNewPrivileges=yes" in user_unit.stdout
        assert "ProtectSystem" not in user_unit.stdout.split("\n### ", 2)[1]
    as_root = subprocess.run([TINGJI, "service", "install", "--dry-run"],
                             env={**env, "SUDO_USER": "root"}, capture_output=True,
                             text=True, timeout=60)
    assert as_root.returncode == 2 and "run as root" in as_root.stderr
    if shutil.which("systemd-analyze") is None:
        return
    (tmp_path / "tingji.service").write_text(unit.replace("EnvironmentFile=/etc/tingji/env",
                                                          f"EnvironmentFile={tmp_path}/env"))
    (tmp_path / "env").write_text("")
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "tingji.service")],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr
    # and it would notice a unit that is wrong
    (tmp_path / "bad.service").write_text(unit.replace("Restart=on-failure", "Restart=often"))
    bad = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "bad.service")],
                         capture_output=True, text=True, timeout=60)
    assert "restart specifier" in bad.stderr


def test_the_environment_file_is_private(tmp_path: Path) -> None:
    from tingji.cli.service import _write_private

    target = tmp_path / "env"
    target.write_text("old")
    target.chmod(0o644)
    _write_private(target, 'TINGJI_API_TOKEN="x"\n')
    assert target.stat().st_mode & 0o777 == 0o600 and "x" in target.read_text()


def test_doctor_packages_are_the_engines(tmp_path: Path, monkeypatch: Any) -> None:
    """The packages line asks for what the configured engine runs on: funasr and torch
    for torch, ONNX Runtime for onnx (a ``tingji[worker-onnx]`` install has no torch),
    either for auto."""
    from importlib import metadata

    from tingji.cli import doctor
    from tingji.settings import Settings

    absent: set[str] = set()

    def version(dist: str) -> str:  # every package the line names is there, but these
        if dist in absent:
            raise metadata.PackageNotFoundError(dist)
        return "1.0"

    monkeypatch.setattr(doctor.metadata, "version", version)

    def packages(engine: str) -> Any:
        s = Settings.from_env({"TINGJI_DATA_DIR": str(tmp_path), "TINGJI_ENGINE": engine})
        return next(f for f in doctor.check_python(s) if f.name == "packages")

    absent.update({"funasr", "torch"})  # tingji[worker-onnx]
    assert packages("onnx").ok and packages("auto").ok
    torch_line = packages("torch")
    assert torch_line.ok is False and "missing: funasr, torch" in torch_line.detail
    absent.clear()
    absent.add("onnxruntime")  # tingji[worker]
    assert packages("torch").ok and packages("auto").ok
    assert packages("onnx").ok is False and "onnxruntime" in packages("onnx").detail
    absent.update({"funasr", "torch"})  # the API alone
    assert packages("auto").ok is False


def test_doctor_says_what_int8_gains_on_this_cpu(tmp_path: Path) -> None:
    """The CPU's flags (``/proc/cpuinfo``) decide the note: VNNI, AVX2 alone, or nothing
    to say (another architecture, or no file)."""
    from tingji.cli import doctor

    def note(flags: str | None) -> list[Any]:
        info = tmp_path / "cpuinfo"
        if flags is None:
            info.unlink(missing_ok=True)
        else:
            info.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
        return list(doctor._int8_speed(doctor.cpu_flags(info)))

    [vnni] = note("fpu sse2 avx2 avx512f avx512_vnni")
    assert vnni.ok is True and vnni.detail.startswith("VNNI")
    assert note("avx2 avx_vnni")[0].ok is True  # Alder Lake and later: AVX-VNNI
    [avx2] = note("fpu sse2 avx2 fma")
    assert avx2.ok is None and "without VNNI" in avx2.detail
    assert note("fpu sse2") == [] and note(None) == []
    if doctor.CPUINFO.is_file():  # this machine's own, as `tingji doctor` reads it
        assert doctor.cpu_flags() and "fpu" in doctor.cpu_flags()
