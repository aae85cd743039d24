"""Where the worker's models come from (``worker.engines.model_sources``), asked before
funasr loads anything."""

from __future__ import annotations

from pathlib import Path


def test_offline_hub_ids_fail_at_once_naming_every_model_and_variable(tmp_path: Path) -> None:
    """A worker on a machine without network whose models are hub ids (the defaults):
    one message within seconds that names each model and its variable, instead of
    funasr's 90 s of hub retries and one model's "not registered"."""
    import asyncio
    import time

    import pytest

    from worker.asr import AsrConfig, AsrEngine, ModelLoadError
    from worker.engines.model_sources import MODELSCOPE_API, hub_reachable

    if hub_reachable("iic/speech_fsmn_vad_zh-cn-16k-common-pytorch", 2.0):
        pytest.skip(f"{MODELSCOPE_API} answers from here: the models would download")
    incomplete = tmp_path / "punc"
    incomplete.mkdir()
    engine = AsrEngine(AsrConfig(model="paraformer-zh", vad_model="fsmn-vad",
                                 punc_model=str(incomplete), engine="torch"))
    started = time.monotonic()
    try:
        with pytest.raises(ModelLoadError) as caught:
            asyncio.run(engine.ensure_loaded())
    finally:
        engine.close()
    message = str(caught.value)
    assert time.monotonic() - started < 15
    for name in ("TINGJI_ASR_MODEL", "TINGJI_VAD_MODEL", "TINGJI_PUNC_MODEL",
                 "paraformer-zh", "fsmn-vad", "tingji models download --to DIR",
                 "missing or empty: config.yaml, model.pt"):
        assert name in message, message


def test_torch_versions_that_load_tensors_only() -> None:
    """funasr calls ``torch.load`` without ``weights_only``: only torch 2.6 and later
    refuse pickled code by default, so the torch engine refuses older ones."""
    from worker.engines.model_folders import torch_loads_tensors_only

    for version in ("2.6.0", "2.13.0+cpu", "2.10.0a0+git", "3.0.0"):
        assert torch_loads_tensors_only(version), version
    for version in ("2.4.1", "2.5.1+cu121", "1.13.1"):
        assert not torch_loads_tensors_only(version), version
