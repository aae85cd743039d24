"""The model trained here (``tests/fixtures/trained``, built by ``bench/train_fixture.py``)
on held-out synthetic speech (``bench/synth.py``: sentences, seeds, speaking rates,
pitches and noise it never heard).  Its logits are peaked like a real model's, so what
random weights cannot show is checked here: it transcribes, the int8 graphs keep its
accuracy, batching changes nothing, its timestamps land on the speech, and the demo
works end to end through the real service."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench import quality
from tests.helpers.procs import TINGJI, clean_env

pytestmark = pytest.mark.slow
pytest.importorskip("funasr")
pytest.importorskip("pypinyin")

FIXTURE = Path(__file__).parent / "fixtures" / "trained"
CLIPS = 24  # held-out utterances, about 100 s of speech
# what the fixture reaches (0.053 on 100 held-out clips, 0.049 on 300: bench/quality.py)
# with room for another CPU's rounding and this smaller sample; a broken frontend,
# LFR/CMVN, CIF or token mapping gives 0.9+
CER_BOUND = 0.10


def _refs(rows: list[dict[str, Any]]) -> list[str]:
    return [row["target"].replace(" ", "") for row in rows]


@pytest.fixture(scope="module")
def held(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The first held-out utterances (rendered with espeak-ng, as the bench does), the
    ONNX graphs exported from the fixture (fp32 and int8), and the torch engine's texts."""
    from worker.engines.onnx.export import export_models

    work = tmp_path_factory.mktemp("trained")
    rows = quality.held_out(work, CLIPS)
    data = work / "data"
    lines: list[str] = []
    roles = [("ASR", "TINGJI_ASR_MODEL", str(FIXTURE / "asr"))]
    assert export_models(roles, data, quantize=True, out=lines.append) == 0, "\n".join(lines)
    paths = [Path(row["source"]) for row in rows]
    lane = quality.lane(FIXTURE / "asr", "torch", data, threads=1)
    try:
        texts = quality.transcribe(lane, paths)
        together = quality.batch_identity(lane, paths[:16])
        decoded = lane.backend.decode([quality.samples(p) for p in paths], ())
    finally:
        lane.close()
    return {"rows": rows, "paths": paths, "data": data, "torch": texts,
            "torch_batched": together, "decoded": decoded}


def test_the_fixture_loads_exactly_as_a_hub_folder_does() -> None:
    """Every tensor in the folder is a parameter of the model its config builds, and
    every parameter comes from the folder (no random weights left), in half precision
    on disk and float32 once loaded."""
    import torch
    from funasr import AutoModel

    stored = torch.load(FIXTURE / "asr" / "model.pt", map_location="cpu")
    model = AutoModel(model=str(FIXTURE / "asr"), disable_update=True, device="cpu").model
    params = model.state_dict()
    assert set(stored) == set(params)
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.float16}
    for name, value in params.items():
        if value.is_floating_point():
            assert value.dtype == torch.float32
            assert torch.equal(value, stored[name].float()), name
    build = json.loads((FIXTURE / "BUILD.json").read_text())
    assert build["parameters"] == sum(v.numel() for v in stored.values())
    assert sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file()) < 25 * 2**20


def test_it_transcribes_speech_it_never_heard(held: dict[str, Any]) -> None:
    """The torch engine's character error rate on held-out sentences; a regression in
    the frontend, the LFR/CMVN, the CIF or the token mapping sends it towards 1."""
    refs = _refs(held["rows"])
    rate = quality.cer(refs, held["torch"])
    assert rate <= CER_BOUND, list(zip(refs, held["torch"], strict=True))


def test_the_onnx_graphs_keep_the_accuracy(held: dict[str, Any]) -> None:
    """fp32 graphs say what torch says; the int8 graphs lose at most one point of CER."""
    paths, refs = held["paths"], _refs(held["rows"])
    fp32 = quality.lane(FIXTURE / "asr", "onnx", held["data"], int8=False, threads=1)
    try:
        hyp_fp32 = quality.transcribe(fp32, paths)
        same, differ = quality.batch_identity(fp32, paths[:16])
    finally:
        fp32.close()
    assert hyp_fp32 == held["torch"]
    assert same, f"{differ} of 16 clips decoded differently beside 7 others (onnx)"
    int8 = quality.lane(FIXTURE / "asr", "onnx", held["data"], int8=True, threads=1)
    try:
        hyp_int8 = quality.transcribe(int8, paths)
    finally:
        int8.close()
    assert quality.cer(refs, hyp_int8) - quality.cer(refs, hyp_fp32) <= 0.01, hyp_int8


def test_batching_changes_nothing_with_confident_logits(held: dict[str, Any]) -> None:
    """Texts and timestamps of a clip decoded alone equal those of the same clip
    decoded in one model call with 7 others (torch engine)."""
    same, differ = held["torch_batched"]
    assert same, f"{differ} of 16 clips decoded differently beside 7 others"


def test_timestamps_lie_on_the_speech(held: dict[str, Any]) -> None:
    """Each character's time is inside the spoken part of its clip (the synthesizer's
    own extent, written beside the clip), in order, and the characters cover most of
    it: a wrong LFR rate, frame shift or CIF offset moves them off."""
    # ms: on these 24 clips 81-238 ms late at the start, -120..+231 at the end; of
    # the first 100 held-out clips, 2 are off by more (at most 384 ms)
    slack = 300
    for row, result in zip(held["rows"], held["decoded"], strict=True):
        begin, end = row["speech_ms"]
        stamps = result["timestamp"]
        assert len(stamps) == len(quality.plain(str(result["text"]))), result
        assert begin - slack <= stamps[0][0] and stamps[-1][1] <= end + slack, (row, stamps)
        assert all(a <= b for a, b in stamps)
        assert all(stamps[i][1] <= stamps[i + 1][0] for i in range(len(stamps) - 1))
        assert stamps[-1][1] - stamps[0][0] >= 0.8 * (end - begin), (row, stamps)


def test_the_demo_runs_through_the_service(tmp_path: Path) -> None:
    """``tingji models demo`` prints settings; the real server and worker started with
    them transcribe its clip, submitted and fetched with the README's commands, to
    about the sentence spoken in it (not nonsense)."""
    from tests.helpers.stack import Stack

    out = subprocess.run([TINGJI, "models", "demo"], env=clean_env(), capture_output=True,
                         text=True, timeout=60, check=True).stdout
    settings = dict(line.split("=", 1) for line in out.splitlines()
                    if line.startswith("TINGJI_"))
    assert settings["TINGJI_ASR_MODEL"] == str(FIXTURE / "asr")
    clip = Path(out.split("# try: tingji submit ", 1)[1].split(" --wait", 1)[0])
    said = out.split("# it says: ", 1)[1].strip()
    assert said == json.loads((FIXTURE / "demo.json").read_text(encoding="utf-8"))["text"]
    models = {"asr": settings["TINGJI_ASR_MODEL"], "vad": settings["TINGJI_VAD_MODEL"],
              "punc": settings["TINGJI_PUNC_MODEL"], "spk": settings["TINGJI_SPK_MODEL"]}
    stack = Stack(tmp_path, models)
    try:
        stack.worker()
        submitted = stack.cli("submit", str(clip), "--wait")  # as the README's tour
        assert submitted.returncode == 0, submitted.stderr
        result = stack.cli("result", submitted.stdout.split()[0])
        assert result.returncode == 0, result.stderr
        # its 10 characters came back right here; 2 wrong would still be the model's
        # held-out error rate (7 %) on a short sentence
        heard = quality.plain(result.stdout)
        assert quality.cer([said], [heard]) <= 0.2, heard
    finally:
        stack.close()
