import re
from pathlib import Path

import pytest

from tingji.settings import Settings, SettingsError


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    s = Settings.from_env({})
    assert s.data_dir == tmp_path / "tingji"  # the user data folder, not ./data
    assert s.database_url == f"sqlite:///{tmp_path / 'tingji' / 'tingji.db'}"
    assert (s.lease_seconds, s.max_attempts, s.max_pending) == (60, 3, 1000)
    assert s.sqlite_synchronous == "FULL" and s.host == "127.0.0.1"
    assert not s.llm_configured


def test_values_are_parsed() -> None:
    s = Settings.from_env({"TINGJI_DATABASE_URL": "postgresql://u@h/db",
                           "TINGJI_SQLITE_SYNCHRONOUS": "normal", "TINGJI_VAD_MODEL": "",
                           "TINGJI_LLM_BASE_URL": "http://127.0.0.1:9/v1",
                           "TINGJI_LLM_MODEL": "deepseek-chat", "TINGJI_DEVICE": "CUDA"})
    assert s.database_url == "postgresql://u@h/db" and not s.database_url.startswith("sqlite")
    assert s.sqlite_synchronous == "NORMAL" and s.vad_model is None
    assert s.llm_configured and s.device == "cuda"
    s = Settings.from_env({"TINGJI_LOG_FORMAT": "json",
                           "TINGJI_API_URL": "http://api.lan:8000/"})
    assert s.log_format == "json" and s.api_url == "http://api.lan:8000"
    assert Settings.from_env({"TINGJI_API_URL": ""}).api_url is None  # opt-in
    s = Settings.from_env({"TINGJI_ENGINE": "ONNX", "TINGJI_ONNX_INT8": "no"})
    assert (s.engine, s.onnx_int8) == ("onnx", False)
    assert (Settings.from_env({}).engine, Settings.from_env({}).onnx_int8) == ("auto", True)


@pytest.mark.parametrize("var,value,why", [
    ("TINGJI_LEASE_SECONDS", "2", "at least 5"),
    ("TINGJI_MAX_ATTEMPTS", "x", "integer"),
    ("TINGJI_DATABASE_URL", "sqlite:///:memory:", "in-memory"),
    ("TINGJI_DATABASE_URL", "mysql://h/db", "sqlite:///path or postgresql"),
    ("TINGJI_PORT", "70000", "port"),
    ("TINGJI_LLM_BASE_URL", "ftp://x", "http(s)"),
    ("TINGJI_DEVICE", "tpu", "one of"),
    ("TINGJI_ASR_BATCH_TASKS", "0", "between 1 and 256"),
    ("TINGJI_ASR_BATCH_TASKS", "eight", "integer"),
    ("TINGJI_CPU_BATCH_SIZE_S", "-1", ">= 0"),
    ("TINGJI_VAD_PROCESSES", "-2", "between 0 and 64"),
    ("TINGJI_ASR_THREADS", "0", "between 1 and 1024"),
    ("TINGJI_YTDLP_COOKIES", "/nonexistent/cookies.txt", "no such file"),
    ("TINGJI_ALLOW_PRIVATE_URLS", "maybe", "not an IP network"),
    ("TINGJI_LOG_FORMAT", "xml", "one of"),
    ("TINGJI_ENGINE", "tensorrt", "one of torch, onnx, auto"),
    ("TINGJI_ONNX_INT8", "maybe", "true or false"),
    ("TINGJI_API_URL", "api.example:8000", "http(s) URL"),
    ("TINGJI_API_URL", "file:///etc/passwd", "http(s) URL"),
])
def test_bad_values_name_the_variable(var: str, value: str, why: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({var: value})
    assert var in str(info.value) and why in str(info.value)


def test_a_bad_url_or_secret_is_not_repeated_in_the_error() -> None:
    """A database URL carries its password; the error names the variable only."""
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"TINGJI_DATABASE_URL": "mysql://admin:hunter2@db/x",
                           "TINGJI_PORT": "http"})
    message = str(info.value)
    assert "TINGJI_DATABASE_URL (its value not shown)" in message
    assert "hunter2" not in message and "TINGJI_PORT='http'" in message


def test_asr_batch_tasks_default_follows_the_device() -> None:
    from worker.main import default_batch_tasks, default_vad_processes

    assert Settings.from_env({}).asr_batch_tasks is None  # resolved by the worker
    assert Settings.from_env({"TINGJI_ASR_BATCH_TASKS": "4"}).asr_batch_tasks == 4
    assert default_batch_tasks("cpu") == 1 and default_batch_tasks("cuda:0") == 8
    assert default_vad_processes("cpu") == 0 and 1 <= default_vad_processes("cuda") <= 4
    assert Settings.from_env({"TINGJI_VAD_PROCESSES": "0"}).vad_processes == 0
    assert Settings.from_env({"TINGJI_CPU_BATCH_SIZE_S": "0"}).cpu_batch_size_s == 0


def test_asr_threads_reach_the_models(tmp_path: Path) -> None:
    """Unset, the models compute on every core; ``TINGJI_ASR_THREADS`` caps them (the
    worker processes of the suite run with 1: their log says so, ``tests/test_worker``)."""
    import os

    from worker.main import Worker

    env = {"TINGJI_DATA_DIR": str(tmp_path)}
    assert Worker(Settings.from_env(env)).asr.config.ncpu == os.cpu_count()
    capped = Worker(Settings.from_env({**env, "TINGJI_ASR_THREADS": "1"}))
    assert capped.asr.config.ncpu == 1


def test_docs_document_every_setting() -> None:
    page = (Path(__file__).resolve().parents[2] / "docs" / "settings.md").read_text()
    table = page.split("# Settings", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in table.splitlines() if line.startswith("| `TINGJI_")]
    documented = set(re.findall(r"`(TINGJI_[A-Z0-9_]+)`", "\n".join(
        row.split(" | ", 1)[0] for row in rows)))
    assert documented == set(Settings.env_names()), (
        f"missing from the docs/settings.md table: {set(Settings.env_names()) - documented}; "
        f"not settings: {documented - set(Settings.env_names())}")

