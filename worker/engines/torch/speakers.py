"""The speaker model (CAM++ by default): funasr's, on torch, for both engines.  Loaded
the first time a task asks for speaker labels; the ONNX engine imports torch here, not
before."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from worker.engines.base import AsrConfig
from worker.engines.model_folders import FUNASR_BUILD_KW
from worker.errors import PermanentTaskError

log = logging.getLogger("tingji.worker.asr")


@dataclass
class SpeakerModel:
    model: Any  # funasr's speaker model
    kwargs: dict[str, Any]  # its build arguments, as funasr keeps them
    cluster: Any  # funasr's ClusterBackend: embeddings -> labels


def load_speaker_model(config: AsrConfig, device: str) -> SpeakerModel:
    if not config.spk_model:
        raise PermanentTaskError("speaker labels need a speaker model (TINGJI_SPK_MODEL)",
                                 type="NoSpeakerModel")
    t = time.perf_counter()
    try:
        from worker.engines.torch.patches import import_funasr

        import_funasr()  # change 6
        from funasr import AutoModel
        from funasr.models.campplus.cluster_backend import ClusterBackend
    except ImportError as exc:  # an ONNX worker without torch (tingji[worker-onnx])
        raise PermanentTaskError(
            f"speaker labels need the speaker model, which runs on torch, and this "
            f"worker cannot import {exc.name or 'funasr'}: pip install 'tingji[worker]' "
            "here, or leave such tasks to a worker that has it",
            type="SpeakersNeedTorch") from None
    try:
        model, kwargs = AutoModel.build_model(
            model=config.spk_model, model_revision="master", device=device,
            ncpu=config.ncpu, **FUNASR_BUILD_KW)
        cluster = ClusterBackend().to(device)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise PermanentTaskError(f"cannot load the speaker model {config.spk_model}: "
                                 f"{type(exc).__name__}: {first}",
                                 type="SpeakerModelLoad") from exc
    log.info("loaded speaker model %s in %.1f s", config.spk_model, time.perf_counter() - t)
    return SpeakerModel(model, kwargs, cluster)
