"""tingji's changes to funasr (``worker.engines.torch.patches``): each one applied, seen
in funasr, and removed again, so that the list in that module is the whole story."""

from __future__ import annotations

import types
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("funasr")


def test_every_change_applies_and_is_removed(caplog: pytest.LogCaptureFixture) -> None:
    from funasr.models.bicif_paraformer.cif_predictor import CifPredictorV3
    from funasr.models.fsmn_vad_streaming.model import FsmnVADStreaming
    from funasr.register import tables
    from funasr.utils import timestamp_tools

    from worker.engines.torch import paraformer, patches
    from worker.engines.torch.fsmnvad import TingjiFsmnVAD

    patches.remove()
    stock_loop = timestamp_tools.cif_wo_hidden  # funasr's own
    assert "TingjiCifPredictorV3" not in tables.predictor_classes
    assert stock_loop.__module__ == "funasr.utils.timestamp_tools"

    patches.apply()
    patches.apply()  # idempotent
    assert tables.predictor_classes["TingjiCifPredictorV3"] is paraformer.TingjiCifPredictorV3
    assert tables.predictor_classes["TingjiCifPredictorV2"] is paraformer.TingjiCifPredictorV2
    assert tables.model_classes["TingjiFsmnVAD"] is TingjiFsmnVAD
    assert timestamp_tools.cif_wo_hidden is not stock_loop

    # 3: a loaded model's predictor and VAD switch class in place, and back
    predictor = CifPredictorV3(idim=8, l_order=1, r_order=1, upsample_times=3,
                               upsample_type="cnn_blstm")
    vad = FsmnVADStreaming.__new__(FsmnVADStreaming)  # its class is all that matters here
    model = types.SimpleNamespace(model=types.SimpleNamespace(predictor=predictor),
                                  vad_model=vad)
    assert patches.patch_model(model) == "predictor TingjiCifPredictorV3, VAD TingjiFsmnVAD"
    assert type(predictor) is paraformer.TingjiCifPredictorV3 and type(vad) is TingjiFsmnVAD
    patches.unpatch_model(model)
    assert type(predictor) is CifPredictorV3 and type(vad) is FsmnVADStreaming

    # 4: the kwargs snapshot learns of a speaker model; inference answered for a block
    class Auto:
        def __init__(self) -> None:
            self._base_kwargs_map: dict[str, Any] = {"kwargs": {}}

        def inference(self, x: Any) -> str:
            return "funasr"

    auto = Auto()
    spk = {"device": "cpu"}
    patches.add_speaker_model(auto, spk)
    assert auto._base_kwargs_map["spk_kwargs"] == spk and \
        auto._base_kwargs_map["spk_kwargs"] is not spk
    with patches.intercepting(auto, lambda x: "tingji"):
        assert auto.inference(1) == "tingji"
    assert auto.inference(1) == "funasr" and "inference" not in vars(auto)

    # 5: torch's exporter, for the block only
    stock_export = torch.onnx.export
    with patches.torchscript_exporter():
        assert torch.onnx.export is not stock_export
    assert torch.onnx.export is stock_export

    patches.remove()
    assert timestamp_tools.cif_wo_hidden is stock_loop
    assert not any(name in getattr(tables, table) for table, name in patches._REGISTERED)
    patches.apply()  # as the rest of this process expects


def test_an_untested_funasr_is_said_once(caplog: pytest.LogCaptureFixture,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from worker.engines.torch import patches

    monkeypatch.setattr(patches, "funasr_version", lambda: "9.9.9")
    monkeypatch.setitem(patches._state, "version_checked", False)
    with caplog.at_level("WARNING", logger="tingji.worker.asr"):
        patches.apply()
        patches.apply()
    said = [r.getMessage() for r in caplog.records if "9.9.9" in r.getMessage()]
    assert len(said) == 1 and "1.4.16" in said[0] and "worker.engines.torch.patches" in said[0]

