"""``tingji models export-onnx`` (worker.engines.onnx.export) with random-weight models at the
hub's widths: the real command in a subprocess, funasr's exporter, ONNX Runtime.

The ASR model is SeACo-Paraformer at paraformer-zh's widths (512, vocabulary 8404) with
few layers; its hotword head says "no bias" everywhere, as a trained model does without
hotwords, so the exported graph (which always runs the bias path) must decode real
speech to exactly the text torch decodes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow
pytest.importorskip("onnxruntime")
pytest.importorskip("funasr")

TINGJI = str(Path(sys.executable).with_name("tingji"))


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tests.helpers.tiny_funasr import build_asr, build_punc, build_vad

    d = tmp_path_factory.mktemp("onnx-models")
    build_asr(str(d / "asr"), "seaco", "narrow", idle_bias=True, predictor_gain=0.05)
    build_vad(str(d / "vad"))
    build_punc(str(d / "punc"), blocks=2)
    return {"asr": d / "asr", "vad": d / "vad", "punc": d / "punc"}


def _export(data: Path, *args: str, **models: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TINGJI_")}
    env.update(TINGJI_DATA_DIR=str(data), TINGJI_ASR_MODEL=models["asr"],
               TINGJI_VAD_MODEL=models["vad"], TINGJI_PUNC_MODEL=models["punc"])
    return subprocess.run([TINGJI, "models", "export-onnx", *args], env=env,
                          capture_output=True, text=True, timeout=600)


def _manifest(line: str) -> dict[str, Any]:
    folder = Path(line.split(": ", 1)[1].split(" (", 1)[0])
    return {"folder": folder, **json.loads((folder / "tingji-onnx.json").read_text())}


def _decode(session: Any, eb: Any, feats: Any, tokens: list[str]) -> str:
    """Greedy decoding of the graph's logits, as funasr's Paraformer does: the first
    ``token_num`` positions, without <blank>, <s> and </s>."""
    import numpy as np

    name = eb.get_inputs()[0].name
    width = eb.get_inputs()[0].shape[1]
    hotword = np.ones((1, width if isinstance(width, int) else 1), dtype=np.int32)  # <s>
    bias = eb.run(None, {name: hotword})[0][:, :1].transpose(1, 0, 2)
    logits, token_num, *_ = session.run(None, {
        "speech": feats.numpy(), "speech_lengths": np.array([feats.shape[1]], np.int32),
        "bias_embed": bias})
    ids = logits[0, :int(token_num[0])].argmax(-1)
    return "".join(tokens[i] for i in ids if i > 2)


@pytest.fixture(scope="module")
def first_export(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
                 ) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One ``tingji models export-onnx --quantize`` run into a new data dir (the test of
    the command and the engine's tests share it: an export of the full-width models takes
    tens of seconds)."""
    data = tmp_path_factory.mktemp("onnx-data")
    return data, _export(data, "--quantize", **{k: str(v) for k, v in models.items()})


@pytest.fixture(scope="module")
def exported(first_export: tuple[Path, subprocess.CompletedProcess[str]]) -> Path:
    """The data dir where ``tingji models export-onnx --quantize`` put the graphs."""
    data, done = first_export
    assert done.returncode == 0, done.stdout + done.stderr
    return data


def test_a_seaco_model_narrower_than_paraformer_zh_exports(tmp_path: Path,
                                                           clips: list[Path]) -> None:
    """funasr's SeACo export feeds the hotword graph a 512-wide dummy embedding (the
    hub's width): a 192-wide model failed with a shape error until tingji gave the dummy
    the model's width.  Its graphs then decode as torch does."""
    from tests.helpers.tiny_funasr import build_asr
    from worker.engines.onnx.export import export_models

    build_asr(tmp_path / "asr", "seaco", "slim", predictor_gain=0.05)
    lines: list[str] = []
    roles = [("ASR", "TINGJI_ASR_MODEL", str(tmp_path / "asr"))]
    assert export_models(roles, tmp_path / "data", quantize=False, out=lines.append) == 0, \
        lines
    assert "matches torch within" in lines[0], lines


def test_export_onnx_writes_graphs_that_decode_as_torch(
        models: dict[str, Path], first_export: tuple[Path, subprocess.CompletedProcess[str]],
        clips: list[Path]) -> None:
    import onnxruntime as ort
    import soundfile as sf
    from funasr import AutoModel
    from funasr.utils.load_utils import extract_fbank
    from rapidfuzz.distance import Levenshtein

    data, done = first_export
    assert done.returncode == 0, done.stdout + done.stderr
    lines = {line.split(" model ")[0]: line for line in done.stdout.splitlines()}
    assert set(lines) == {"ASR", "VAD", "punctuation"}, done.stdout
    found = {}
    for role, line in lines.items():
        assert "the fp32 graph matches torch within" in line, line
        m = found[role] = _manifest(line)
        assert m["folder"].parent == data / "onnx" and m["quantize"] is True
        assert {"model.onnx", "model_quant.onnx"} <= set(m["files"])
        assert m["max_diff"] <= m["tolerance"] == 1e-3
        assert (m["folder"] / "config.yaml").is_file()  # what the runtime reads, beside
    assert {"model_eb.onnx", "model_eb_quant.onnx"} <= set(found["ASR"]["files"])
    assert (found["ASR"]["folder"] / "am.mvn").is_file()
    assert (found["ASR"]["folder"] / "tokens.json").is_file()
    assert not list((data / "onnx").glob("*.partial"))

    # real speech through the exported ASR graph: torch's text, character for character
    auto = AutoModel(model=str(models["asr"]), device="cpu", ncpu=1, disable_update=True,
                     disable_pbar=True, log_level="ERROR")
    folder = found["ASR"]["folder"]
    tokens = json.loads((folder / "tokens.json").read_text(encoding="utf-8"))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    graphs = {n: ort.InferenceSession(str(folder / n), options)
              for n in ("model.onnx", "model_quant.onnx", "model_eb.onnx")}
    errors = chars = 0
    for clip in clips[:3]:
        audio, _ = sf.read(clip, dtype="float32")
        audio = audio[: 16000 * 8]  # one VAD-sized segment
        want = "".join(auto.generate(input=audio)[0]["text"].split())
        feats, _ = extract_fbank([audio], data_type="sound", frontend=auto.kwargs["frontend"])
        fp32 = _decode(graphs["model.onnx"], graphs["model_eb.onnx"], feats, tokens)
        assert fp32 == want and len(want) > 10
        int8 = _decode(graphs["model_quant.onnx"], graphs["model_eb.onnx"], feats, tokens)
        errors += Levenshtein.distance(int8, fp32)
        chars += len(fp32)
    print(f"int8 against fp32: character error rate {errors / chars:.3f} over {chars} "
          "characters (random weights: flat logits flip more than trained ones)")

    # a second run finds the exports and leaves them be
    again = _export(data, "--quantize", **{k: str(v) for k, v in models.items()})
    assert again.returncode == 0 and again.stdout.count("exported before") == 3, again.stdout
    assert json.loads((folder / "tingji-onnx.json").read_text()) == {
        k: v for k, v in found["ASR"].items() if k != "folder"}


def test_export_onnx_reports_each_model_and_keeps_going(models: dict[str, Path],
                                                        tmp_path: Path) -> None:
    """A model that cannot be loaded is one line and exit code 1; the others are still
    exported; a folder that already holds model.onnx is used as it is."""
    ready = tmp_path / "asr-onnx"
    ready.mkdir()
    (ready / "model.onnx").write_bytes(b"an ONNX graph from the hub")
    data = tmp_path / "data"
    done = _export(data, asr=str(ready), vad=str(tmp_path / "no-such-vad"),
                   punc=str(models["punc"]))
    assert done.returncode == 1, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert f"ASR model {ready}: already ONNX (model.onnx), used as it is" in out
    missing = tmp_path / "no-such-vad"
    assert any(line.startswith(f"VAD model {missing}: cannot load it")
               and f"({missing} does not exist; point TINGJI_VAD_MODEL at" in line
               for line in out), out
    punc = _manifest(next(line for line in out if line.startswith("punctuation")))
    assert punc["files"] == ["model.onnx"] and punc["quantize"] is False
    assert sorted(p.name for p in (data / "onnx").iterdir()) == [punc["folder"].name]

    # new weights in the model folder: the next run exports again
    retrained = tmp_path / "punc"
    shutil.copytree(models["punc"], retrained)
    kw = {"asr": str(ready), "vad": "", "punc": str(retrained)}
    assert "the fp32 graph matches torch" in _export(data, **kw).stdout
    assert "exported before" in _export(data, **kw).stdout
    (retrained / "model.pt").write_bytes((retrained / "model.pt").read_bytes())
    os.utime(retrained / "model.pt", ns=(1, 1))  # a new mtime, whatever the clock
    assert "the fp32 graph matches torch" in _export(data, **kw).stdout


# --------------------------------------------------------------------- the ONNX engine


def _engine(models: dict[str, Path], data: Path, engine: str, *, int8: bool = False,
            batch_tasks: int = 1, spk_model: str | None = None, punc: bool = True) -> Any:
    from worker.asr import AsrConfig, AsrEngine

    return AsrEngine(AsrConfig(model=str(models["asr"]), vad_model=str(models["vad"]),
                               punc_model=str(models["punc"]) if punc else None,
                               device="cpu", engine=engine,
                               onnx_int8=int8, data_dir=data, ncpu=1, spk_model=spk_model))


def _transcribe(engine: Any, clips: list[Path], *, together: bool = False,
                hotwords: tuple[str, ...] = (), speakers: int | str | None = None
                ) -> list[Any]:
    """Each clip's transcript: one group of all of them, or one group each."""
    import asyncio
    import threading

    from worker.asr import transcript_of
    from worker.batching import AsrJob

    async def run() -> list[Any]:
        jobs = [AsrJob(c, stop=threading.Event(), hotwords=hotwords, speakers=speakers)
                for c in clips]
        if together:
            await engine.transcribe_many(jobs)
        else:
            for job in jobs:
                await engine.transcribe_many([job])
        return [transcript_of(j) for j in jobs]
    try:
        return asyncio.run(run())
    finally:
        engine.close()


def test_onnx_engine_gives_torch_text_and_timestamps(models: dict[str, Path], exported: Path,
                                                     clips: list[Path]) -> None:
    """The same clips through both engines: fp32 graphs give torch's text, sentences and
    character timestamps (stated tolerance: equal); int8 graphs' character error rate
    against fp32 is printed.  One graph call per segment: a group of all clips gives
    every clip the transcript it gets alone."""
    from rapidfuzz.distance import Levenshtein

    torch_tr = _transcribe(_engine(models, exported, "torch"), clips)
    onnx = _engine(models, exported, "onnx")
    fp32 = _transcribe(onnx, clips)
    assert onnx.engine == "onnx" and onnx.backend.asr.int8 is False
    for t, o in zip(torch_tr, fp32, strict=True):
        assert len(t.text) > 10
        assert o.text == t.text
        assert [(s.start_ms, s.end_ms, s.text) for s in o.segments] == \
            [(s.start_ms, s.end_ms, s.text) for s in t.segments]
        assert [s.chars for s in o.segments] == [s.chars for s in t.segments]
    assert [tr.text for tr in _transcribe(_engine(models, exported, "onnx"), clips,
                                          together=True)] == [tr.text for tr in fp32]

    int8_engine = _engine(models, exported, "onnx", int8=True)
    int8 = _transcribe(int8_engine, clips)
    assert int8_engine.backend.asr.path.name == "model_quant.onnx"
    errors = sum(Levenshtein.distance(i.text, f.text) for i, f in zip(int8, fp32, strict=True))
    chars = sum(len(f.text) for f in fp32)
    assert all(i.segments for i in int8)
    print(f"ONNX engine, int8 against fp32: character error rate {errors / chars:.3f} over "
          f"{chars} characters (random weights: flat logits flip more than trained ones)")


def test_onnx_engine_labels_speakers_as_torch(models: dict[str, Path], exported: Path,
                                              tiny_models: dict[str, str],
                                              tmp_path: Path) -> None:
    """Where torch is installed, a task that asks for speakers on the ONNX engine gets
    funasr's speaker step (CAM++ on torch) around the engine's segments: the torch
    engine's sentences, character timestamps and labels, with punctuation (sentences by
    punctuation) and without (a sentence per VAD segment), for a known count and for
    ``auto``.  (Random CAM++ weights cluster pauses apart from speech, not voices:
    ``tests/test_batching.py`` shows two voices labelled apart on the torch engine.)"""
    from tests.helpers import media as m

    two = m.speech_wav(tmp_path / "two.wav", m.SENTENCES[:6], pause_s=0.9,
                       voices=("cmn", "cmn+f4"))
    for punc, speakers in ((True, 2), (True, "auto"), (False, 2)):
        kw = {"spk_model": tiny_models["spk"], "punc": punc}
        want = _transcribe(_engine(models, exported, "torch", **kw), [two],
                           speakers=speakers)[0]
        onnx = _engine(models, exported, "onnx", **kw)
        got = _transcribe(onnx, [two], speakers=speakers)[0]
        assert onnx.engine == "onnx" and onnx.spk_loads == 1
        assert len(want.segments) >= (3 if punc else 1)
        assert None not in {s.speaker for s in want.segments}
        assert [(s.start_ms, s.end_ms, s.text, s.chars, s.speaker) for s in got.segments] \
            == [(s.start_ms, s.end_ms, s.text, s.chars, s.speaker) for s in want.segments]
        print(f"punctuation {punc}, speakers {speakers}: "
              f"{[(s.start_ms, s.end_ms, s.speaker) for s in got.segments]}")
    # a task without speakers on a worker that has the speaker model: no labels
    plain = _transcribe(_engine(models, exported, "onnx", spk_model=tiny_models["spk"],
                                punc=False), [two])[0]
    assert plain.text == got.text and all(s.speaker is None for s in plain.segments)


def test_onnx_vad_cuts_as_funasr_across_chunks(models: dict[str, Path], exported: Path,
                                               clips: list[Path], tmp_path: Path) -> None:
    """The torch-free FSMN-VAD (``worker.engines.onnx.vad``) against funasr's own on a 2.5-minute
    file: speech, long silences and noise, crossing funasr's 60-second chunks, with the
    dynamic end-silence schedule (the default) and with a fixed end silence.  The
    segments are equal, millisecond for millisecond."""
    import numpy as np
    import soundfile as sf
    from funasr import AutoModel

    from worker.engines.onnx.graphs import read_config
    from worker.engines.onnx.vad import FsmnVad

    rng = np.random.default_rng(7)
    parts = []
    for n, clip in enumerate(clips * 2):
        audio, _ = sf.read(str(clip), dtype="float32")
        parts.append(audio)
        gap = 16000 * (1 + n % 4)  # 1-4 s between the clips: silence, then noise
        parts.append(np.zeros(gap, np.float32) if n % 2 else
                     (rng.standard_normal(gap) * 0.003).astype(np.float32))
    audio = np.concatenate(parts)[: 16000 * 150 + 123]  # not a whole number of chunks
    wav = tmp_path / "long.wav"
    sf.write(str(wav), audio, 16000, subtype="PCM_16")
    audio, _ = sf.read(str(wav), dtype="float32")
    folder = next(p for p in (exported / "onnx").iterdir() if p.name.startswith("vad"))
    for vad_kwargs in ({"max_single_segment_time": 60_000},
                       {"max_single_segment_time": 60_000, "max_end_silence_time": 500},
                       {"max_single_segment_time": 8_000}):
        stock = AutoModel(model=str(models["vad"]), device="cpu", disable_update=True,
                          disable_pbar=True, log_level="ERROR", **vad_kwargs)
        want = stock.generate(input=str(wav))[0]["value"]
        ours = FsmnVad(folder, folder / "model.onnx", read_config(folder), vad_kwargs, 2)
        got = ours(audio)
        assert len(want) > 8, want
        assert got == want, vad_kwargs
    assert FsmnVad(folder, folder / "model.onnx", read_config(folder), {}, 1)(
        np.zeros(16000 * 70, np.float32)) == AutoModel(
        model=str(models["vad"]), device="cpu", disable_update=True, disable_pbar=True,
        log_level="ERROR").generate(input=str(_silence(tmp_path)))[0]["value"]


def _silence(tmp_path: Path) -> Path:
    import numpy as np
    import soundfile as sf

    path = tmp_path / "silence.wav"
    sf.write(str(path), np.zeros(16000 * 70, np.float32), 16000, subtype="PCM_16")
    return path


def test_onnx_engine_hotwords_take_the_bias_path(models: dict[str, Path], exported: Path,
                                                 clips: list[Path]) -> None:
    """Hotwords go through the exported hotword embedder (funasr's tokenization, the
    LSTM state at each hotword's last token).  This model's hotword head says "no bias"
    for any bias, as a trained one does where no hotword is spoken: the text is torch's
    with the same hotwords."""
    words = ("听记", "转写", "一个很长的热词超过十个字的上限")  # the last is cut to 10
    want = _transcribe(_engine(models, exported, "torch"), clips[:2], hotwords=words)
    onnx = _engine(models, exported, "onnx")
    got = _transcribe(onnx, clips[:2], hotwords=words)
    assert [g.text for g in got] == [w.text for w in want]
    ids = onnx.backend.asr.hotword_ids(["听记"])
    assert ids[-1] == [onnx.backend.asr.sos] and len(ids) == 2
    assert onnx.backend.asr.bias(ids).shape == (1, 2, 512)


def test_onnx_engine_without_graphs_says_how_to_make_them(models: dict[str, Path],
                                                          tmp_path: Path) -> None:
    """TINGJI_ENGINE=onnx with nothing exported: the worker stops with one line naming the
    command; auto (ONNX on a CPU) runs torch instead and says why."""
    import asyncio

    from worker.asr import ModelLoadError

    engine = _engine(models, tmp_path / "empty", "onnx")
    try:
        with pytest.raises(ModelLoadError, match=r"no ONNX graphs for the ASR model .* "
                           r"\(TINGJI_ASR_MODEL\): run `tingji models export-onnx "
                           r"--quantize` once"):
            asyncio.run(engine.ensure_loaded())
        assert not engine.loaded
    finally:
        engine.close()
    auto = _engine(models, tmp_path / "empty", "auto")
    try:
        asyncio.run(auto.ensure_loaded())
        assert auto.engine == "torch" and auto.loaded
    finally:
        auto.close()


@pytest.fixture(scope="module")
def onnx_install(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real installation of ``tingji[worker-onnx]`` in a new virtual environment, at
    the locked versions: no torch, no funasr.  Its ``tingji`` executable."""
    import re

    root = Path(__file__).resolve().parents[1]
    venv = tmp_path_factory.mktemp("worker-onnx") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pins = [line.split()[0] for line in
            (root / "requirements-test.lock").read_text(encoding="utf-8").splitlines()
            if re.match(r"^[A-Za-z0-9_.-]+==", line)]
    constraints = venv / "constraints.txt"
    constraints.write_text("\n".join(pins) + "\n", encoding="utf-8")
    # --no-compile: the worker compiles what it imports; pip would compile every module
    # of every package (yt-dlp's extractors...), 26 of the install's 62 s here
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-compile",
                           "--disable-pip-version-check", "-c", str(constraints),
                           "-e", f"{root}[worker-onnx]"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    found = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import importlib.util as u; "
                            "print(u.find_spec('torch'), u.find_spec('funasr'))"],
                           capture_output=True, text=True, timeout=60, check=True)
    assert found.stdout.split() == ["None", "None"]  # neither is installed there
    return venv / "bin" / "tingji"


def test_worker_on_the_onnx_engine_completes_upload_and_url_tasks(
        tmp_path: Path, models: dict[str, Path], exported: Path, tiny_models: dict[str, str],
        media: dict[str, Path], files: Any, onnx_install: Path) -> None:
    """A real server and a worker installed with ``tingji[worker-onnx]`` (no torch, no
    funasr) with TINGJI_ENGINE=onnx on model folders that hold their graphs (as the
    hub's -onnx models do): an upload and a URL task complete, one model load, and the
    worker reports the graphs it runs.  A task that asks for speaker labels fails with a
    message that says why."""
    from tests.helpers.stack import Stack

    ready = {}
    for role in ("asr", "vad", "punc"):
        found = next(p for p in (exported / "onnx").iterdir() if p.name.startswith(role))
        ready[role] = tmp_path / f"{role}-onnx"
        shutil.copytree(models[role], ready[role])
        for graph in found.glob("*.onnx"):
            shutil.copy2(graph, ready[role] / graph.name)
    stack = Stack(tmp_path / "stack", {**tiny_models, **{k: str(v) for k, v in ready.items()}},
                  TINGJI_ENGINE="onnx")
    try:
        worker = stack.worker(exe=str(onnx_install))
        tids = [stack.upload(media["speech"]), stack.submit_url(f"{files.url}/talk.mp4")]
        for tid in tids:
            task = stack.finished(tid, timeout=240)
            assert task["status"] == "completed", task
            assert task["result"]["segments"] > 1 and len(task["result"]["text"]) > 20
        [w] = [w for w in stack.http.get("/api/v1/queue").json()["workers"]
               if w["pid"] == worker.pid]
        assert w["model_loads"] == 1
        refused = stack.finished(stack.upload(media["speech"], speakers="2"), timeout=120)
        assert refused["status"] == "failed", refused
        assert refused["error"]["type"] == "SpeakersNeedTorch"
        assert "pip install 'tingji[worker]'" in refused["error"]["message"]
        log = worker.output()
        assert f"engine onnx: ASR {ready['asr']}/model_quant.onnx" in log, log[-2000:]
        assert f"VAD {ready['vad']}/model.onnx" in log  # VAD: fp32 always
        assert f"punctuation {ready['punc']}/model_quant.onnx" in log
    finally:
        stack.close()


def test_doctor_checks_the_graphs_the_engine_needs(models: dict[str, Path], exported: Path,
                                                   tmp_path: Path) -> None:
    """``tingji doctor`` with TINGJI_ENGINE=onnx: one line per graph role; a missing export
    fails with the command that makes it (with auto it is a note: torch runs)."""
    from tests.test_ops import _doctor

    env = {k: v for k, v in os.environ.items() if not k.startswith("TINGJI_")}
    env.update(TINGJI_ASR_MODEL=str(models["asr"]), TINGJI_VAD_MODEL=str(models["vad"]),
               TINGJI_PUNC_MODEL=str(models["punc"]), TINGJI_ENGINE="onnx",
               TINGJI_DATA_DIR=str(exported))
    _, lines = _doctor(env)
    for role in ("ASR", "VAD", "punctuation"):
        assert lines[f"onnx {role}"].startswith("[ ok ]"), lines[f"onnx {role}"]
    assert "model_quant.onnx" in lines["onnx ASR"] and "model_eb.onnx" in lines["onnx ASR"]
    code, lines = _doctor({**env, "TINGJI_DATA_DIR": str(tmp_path / "empty")})
    assert code == 1
    assert lines["onnx ASR"].startswith("[FAIL]") and "not exported" in lines["onnx ASR"]
    assert "fix: tingji models export-onnx --quantize" in lines["onnx ASR"]
    _, lines = _doctor({**env, "TINGJI_DATA_DIR": str(tmp_path / "empty"),
                        "TINGJI_ENGINE": "auto"})
    assert lines["onnx punctuation"].startswith("[note]") and "torch" in lines["onnx punctuation"]
