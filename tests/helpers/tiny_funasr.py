"""Model folders for the tests and benchmarks: funasr's own model classes with random
weights (model hubs are out of reach here), saved in the layout of a hub snapshot, so
``funasr.AutoModel`` loads them through the very code that loads ``paraformer-zh``.

Each folder holds ``config.yaml``, ``model.pt`` (a plain state_dict), and as the model
needs them ``tokens.json``, ``am.mvn`` (Kaldi nnet1 text CMVN) and ``configuration.json``
(its ``file_path_metas`` as on the hub; without it funasr reads ``config.yaml`` alone).

A few weights are set by hand so that the nonsense these models say behaves like speech
recognition where the tests look:

- **ASR** (SeACo-Paraformer by default, what ``paraformer-zh`` is): the CIF predictor
  fires at a speech-like rate (about 4.5 tokens a second), the decoder never says
  ``<blank>``, ``<s>``, ``</s>`` or ``<unk>`` (so no text is empty), and with
  ``idle_bias`` the hotword head says "no bias", as a trained model does where no hotword
  is spoken.
- **VAD** (fsmn-vad's real dimensions): an energy detector -- the speech posterior rises
  with the frame's mean log-mel energy -- so it cuts on the test clips' pauses.
- **punctuation** (CT-Transformer): mostly no mark, sometimes one of ，。？、.
- **speakers** (CAM++): random embeddings through the real feature and clustering code.

Built with ``../shared/tools/make_tiny_funasr.py`` in mind (the recipe that was seen
working); this module is tingji's own.

    python -m tests.helpers.tiny_funasr OUT            # asr, vad, punc, spk (tiny)
    python -m tests.helpers.tiny_funasr OUT --size full --only asr
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import torch
import yaml

CONTROL = ["<blank>", "<s>", "</s>"]  # ids 0, 1, 2: Paraformer's blank, sos and eos
UNKNOWN = "<unk>"  # the last id, as in the hub's tokens.json
PUNCTUATION = ["<unk>", "_", "，", "。", "？", "、"]  # ct-punc's marks, "_" = none


@dataclass(frozen=True)
class AsrSize:
    width: int
    heads: int
    encoder: tuple[int, int]  # (feed-forward units, blocks)
    decoder: tuple[int, int, int]  # (units, blocks, blocks with attention over the encoder)
    hotwords: tuple[int, int, int]  # SeACo's bias decoder, likewise
    vocabulary: int | None  # None: the common characters alone


ASR_SIZES = {
    # a few MB; loads in well under a second
    "tiny": AsrSize(64, 4, (128, 2), (128, 1, 1), (64, 1, 1), None),
    # the hub's widths (funasr's ONNX exporter assumes 512 and 8404 tokens), few blocks;
    # six bias-decoder blocks, which the hotword graph's export reads
    "narrow": AsrSize(512, 4, (256, 2), (256, 1, 1), (128, 1, 6), 8404),
    # narrower than the hub (192, as bench/train_fixture.py's model), with the six
    # bias-decoder blocks the hotword graph's export reads
    "slim": AsrSize(192, 4, (256, 2), (256, 1, 1), (64, 1, 6), None),
    # Paraformer-large / SeACo-Paraformer-large (FunASR's template.yaml)
    "full": AsrSize(512, 4, (2048, 50), (2048, 16, 16), (1024, 4, 6), 8404),
}
# ct-punc's vocabulary is in its hub name (471,067); 512 wide, 8 heads, 2048 units and 6
# blocks make 260 M parameters, a 1.04 GB model.pt against the hub checkpoint's 1.05 GB
PUNC_SIZES = {"tiny": (64, 4, 128, None), "full": (512, 8, 2048, 471_067)}


# ----------------------------------------------------------------------------- files
@cache
def common_characters(n: int = 400) -> tuple[str, ...]:
    """The ``n`` most frequent one-character words of jieba's dictionary, then the
    characters of the test clips' sentences: what the tiny vocabulary holds."""
    import jieba

    from tests.helpers.media import SENTENCES

    counted: list[tuple[int, str]] = []
    with (Path(jieba.__file__).parent / "dict.txt").open(encoding="utf-8") as words:
        for line in words:
            word, count, *_ = line.split()
            if len(word) == 1 and "\u4e00" <= word <= "\u9fff":
                counted.append((-int(count), word))
    ranked = [w for _, w in sorted(counted)][:n]
    spoken = [c for sentence in SENTENCES for c in sentence if "\u4e00" <= c <= "\u9fff"]
    return tuple(dict.fromkeys(ranked + spoken))


def vocabulary(size: int | None) -> list[str]:
    """Tokens: the control tokens, characters, ``<unk>``; padded with further CJK
    ideographs (then pairs of them) to exactly ``size`` when given."""
    chars = list(common_characters())
    if size is not None:
        known = set(chars)
        ideographs = [chr(c) for c in range(0x4E00, 0xA000)]
        # single ideographs first, then two-ideograph words (ct-punc's vocabulary holds
        # 471,067 tokens, far more than there are ideographs)
        extra = itertools.chain((c for c in ideographs if c not in known),
                                (a + b for a in ideographs for b in ideographs))
        chars = (chars + [next(extra) for _ in range(max(0, size - 4 - len(chars)))])[:size - 4]
    return CONTROL + chars + [UNKNOWN]


def cmvn_text(dims: int, shift: float, scale: float) -> str:
    """Kaldi nnet1 text CMVN (what funasr's ``load_cmvn`` parses): one shift and one
    scale for every dimension."""
    def row(value: float) -> str:
        return " ".join([f"{value:.6f}"] * dims)
    return (f"<Nnet>\n<Splice> {dims} {dims}\n[ 0 ]\n"
            f"<AddShift> {dims} {dims}\n<LearnRateCoef> 0 [ {row(shift)} ]\n"
            f"<Rescale> {dims} {dims}\n<LearnRateCoef> 0 [ {row(scale)} ]\n</Nnet>\n")


def write_folder(folder: Path, config: dict[str, Any], module: torch.nn.Module, *,
                 tokens: list[str] | None = None, cmvn: tuple[int, float, float] | None = None,
                 configuration_json: bool = True) -> int:
    """A model folder as the hub lays it out; returns the module's parameter count."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(
        yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")
    metas: dict[str, Any] = {"init_param": "model.pt", "config": "config.yaml"}
    if tokens is not None:
        (folder / "tokens.json").write_text(json.dumps(tokens, ensure_ascii=False),
                                            encoding="utf-8")
        metas["tokenizer_conf"] = {"token_list": "tokens.json"}
    if cmvn is not None:
        (folder / "am.mvn").write_text(cmvn_text(*cmvn), encoding="utf-8")
        metas["frontend_conf"] = {"cmvn_file": "am.mvn"}
    if configuration_json:
        (folder / "configuration.json").write_text(json.dumps(
            {"framework": "pytorch", "task": "auto-speech-recognition",
             "model": {"type": "funasr"}, "file_path_metas": metas}, indent=1))
    torch.save({k: v.detach().contiguous() for k, v in module.state_dict().items()},
               folder / "model.pt")
    return sum(p.numel() for p in module.parameters())


def build_module(config: dict[str, Any], **overrides: Any) -> torch.nn.Module:
    """The module funasr builds from ``config``: its class from funasr's tables, called
    with the config's entries and ``model_conf`` on top."""
    import funasr  # noqa: F401  (importing it fills the tables)
    from funasr.register import tables

    arguments = {**config.get("model_conf", {}), **config, **overrides}
    return tables.model_classes.get(config["model"])(**arguments)  # type: ignore[no-any-return]


def _dropouts(*names: str, rate: float = 0.1) -> dict[str, float]:
    return {name: rate for name in names}


# ----------------------------------------------------------------------------- ASR
def asr_config(arch: str, size: str, tokens: int) -> dict[str, Any]:
    z = ASR_SIZES[size]
    sanm = {"kernel_size": 11, "sanm_shfit": 0}
    config: dict[str, Any] = {
        "model": {"seaco": "SeacoParaformer", "bicif": "BiCifParaformer",
                  "paraformer": "Paraformer"}[arch],
        "model_conf": {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True,
                       "predictor_weight": 1.0, "predictor_bias": 1, "sampling_ratio": 0.75},
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "output_size": z.width, "attention_heads": z.heads,
            "linear_units": z.encoder[0], "num_blocks": z.encoder[1],
            **_dropouts("dropout_rate", "positional_dropout_rate", "attention_dropout_rate"),
            "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
            "normalize_before": True, "selfattention_layer_type": "sanm", **sanm},
        "decoder": "ParaformerSANMDecoder",
        "decoder_conf": {
            "attention_heads": z.heads, "linear_units": z.decoder[0],
            "num_blocks": z.decoder[1], "att_layer_num": z.decoder[2],
            **_dropouts("dropout_rate", "positional_dropout_rate",
                        "self_attention_dropout_rate", "src_attention_dropout_rate"), **sanm},
    }
    cif = {"idim": z.width, "threshold": 1.0, "l_order": 1, "r_order": 1,
           "tail_threshold": 0.45}
    if arch == "paraformer":  # no timestamp head
        config.update(predictor="CifPredictorV2", predictor_conf=cif)
    else:
        config.update(predictor="CifPredictorV3", predictor_conf={
            **cif, "smooth_factor2": 0.25, "noise_threshold2": 0.01, "upsample_times": 3,
            "use_cif1_cnn": False, "upsample_type": "cnn_blstm"})
    if arch == "seaco":
        config["model_conf"].update(
            inner_dim=z.width, bias_encoder_type="lstm", bias_encoder_bid=False,
            seaco_lsm_weight=0.1, seaco_length_normal=True, train_decoder=False,
            NO_BIAS=8377 if tokens == 8404 else tokens - 2)
        config["seaco_decoder"] = "ParaformerSANMDecoder"
        config["seaco_decoder_conf"] = {
            **config["decoder_conf"], "linear_units": z.hotwords[0],
            "num_blocks": z.hotwords[1], "att_layer_num": z.hotwords[2], "kernel_size": 21,
            "use_output_layer": False, "wo_input_layer": True}
    config.update(
        frontend="WavFrontend",
        frontend_conf={"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                       "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "dither": 0.0},
        specaug="SpecAugLFR",  # as on the hub; it does nothing in eval()
        specaug_conf={"apply_time_warp": False, "time_warp_window": 5,
                      "time_warp_mode": "bicubic", "apply_freq_mask": True,
                      "freq_mask_width_range": [0, 30], "lfr_rate": 6, "num_freq_mask": 1,
                      "apply_time_mask": True, "time_mask_width_range": [0, 12],
                      "num_time_mask": 1},
        tokenizer="CharTokenizer",
        tokenizer_conf={"unk_symbol": UNKNOWN, "split_with_space": True},
        input_size=560, normalize=None)
    return config


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def build_asr(out: str | Path, arch: str = "seaco", size: str = "tiny", seed: int = 0,
              configuration_json: bool = True, token_rate: float = 0.27,
              predictor_gain: float = 0.01, idle_bias: bool = False) -> tuple[int, int]:
    """(parameters, tokens).  ``token_rate``: tokens per 60 ms frame the CIF predictor
    fires at.  ``predictor_gain`` scales its output weights: at 0.01 the rate barely
    depends on the audio; larger gains let the text's length and timestamps follow the
    encoder output closely, which is what tests of padding and batching need."""
    torch.manual_seed(seed)
    tokens = vocabulary(ASR_SIZES[size].vocabulary)
    config = asr_config(arch, size, len(tokens))
    model = build_module(config, vocab_size=len(tokens), input_size=560)
    with torch.no_grad():
        predictor = model.predictor
        heads = [(predictor.cif_output, token_rate)]
        if hasattr(predictor, "cif_output2"):  # the timestamp head, over upsampled frames
            heads.append((predictor.cif_output2, token_rate / predictor.upsample_times))
        for layer, rate in heads:
            layer.weight.mul_(predictor_gain)
            layer.bias.fill_(_logit(rate))
        never = torch.tensor([0, 1, 2, len(tokens) - 1])
        model.decoder.output_layer.bias[never] = -20.0
        if idle_bias and arch == "seaco":
            model.hotword_output_layer.bias[model.NO_BIAS] = 50.0
    n = write_folder(Path(out), config, model, tokens=tokens, cmvn=(560, -12.0, 0.2),
                     configuration_json=configuration_json)
    return n, len(tokens)


# ----------------------------------------------------------------------------- VAD
def vad_config() -> dict[str, Any]:
    """fsmn-vad's configuration, its end silence shortened to the clips' 1.2 s pauses."""
    detection = {
        "sample_rate": 16000, "detect_mode": 1, "snr_mode": 0, "max_end_silence_time": 800,
        "max_start_silence_time": 3000, "do_start_point_detection": True,
        "do_end_point_detection": True, "window_size_ms": 200,
        "sil_to_speech_time_thres": 150, "speech_to_sil_time_thres": 150,
        "speech_2_noise_ratio": 1.0, "do_extend": 1, "lookback_time_start_point": 200,
        "lookahead_time_end_point": 100, "max_single_segment_time": 60000,
        "snr_thres": -100.0, "noise_frame_num_used_for_snr": 100, "decibel_thres": -100.0,
        "speech_noise_thres": 0.6, "fe_prior_thres": 0.0001, "silence_pdf_num": 1,
        "sil_pdf_ids": [0], "speech_noise_thresh_low": -0.1,
        "speech_noise_thresh_high": 0.3, "output_frame_probs": False, "frame_in_ms": 10,
        "frame_length_ms": 25}
    fsmn = {"input_dim": 400, "input_affine_dim": 140, "fsmn_layers": 4, "linear_dim": 250,
            "proj_dim": 128, "lorder": 20, "rorder": 0, "lstride": 1, "rstride": 0,
            "output_affine_dim": 140, "output_dim": 248}
    return {"model": "FsmnVADStreaming", "model_conf": detection,
            "encoder": "FSMN", "encoder_conf": fsmn,
            "frontend": "WavFrontendOnline",
            "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80,
                              "frame_length": 25, "frame_shift": 10, "dither": 0.0,
                              "lfr_m": 5, "lfr_n": 1}}


def build_vad(out: str | Path, seed: int = 0, configuration_json: bool = True,
              threshold: float = 8.0, k: float = 0.25) -> int:
    """An energy detector in FSMN's layers: channel 0 carries how far the frame's mean
    log-mel energy is above ``threshold``, channel 1 how far below, unchanged through
    every layer; the output's pdf 0 (silence) and pdf 1 (speech) weigh them by ``k``."""
    torch.manual_seed(seed)
    config = vad_config()
    model = build_module(config)
    net = model.encoder
    with torch.no_grad():
        for weights in net.parameters():
            weights.zero_()
        first = net.in_linear1.linear
        first.weight[0].fill_(1.0 / config["encoder_conf"]["input_dim"])  # mean energy
        first.bias[0] = -threshold
        split = net.in_linear2.linear.weight
        split[0, 0], split[1, 0] = 1.0, -1.0  # relu(x - t): speech, relu(t - x): silence
        through = [b.linear.linear for b in net.fsmn] + [b.affine.linear for b in net.fsmn]
        for layer in [*through, net.out_linear1.linear]:
            layer.weight[0, 0] = layer.weight[1, 1] = 1.0
        last = net.out_linear2.linear
        last.weight[:2, :2] = torch.tensor([[-k, k], [k, -k]])
        last.bias[2:] = -10.0  # the other pdfs: negligible, never zero
    return write_folder(Path(out), config, model, cmvn=(400, 0.0, 1.0),
                        configuration_json=configuration_json)


# ----------------------------------------------------------------------------- punctuation
def build_punc(out: str | Path, seed: int = 0, configuration_json: bool = True,
               blocks: int | None = None, size: str = "tiny") -> int:
    """``blocks``: funasr's ONNX exporter reads a second stack, so 2 there; default 1
    (tiny) or 6 (full)."""
    torch.manual_seed(seed)
    width, heads, units, vocab = PUNC_SIZES[size]
    tokens = vocabulary(vocab)
    config = {
        "model": "CTTransformer",
        "model_conf": {"ignore_id": 0, "embed_unit": width, "att_unit": width,
                       "dropout_rate": 0.1, "punc_list": PUNCTUATION,
                       "punc_weight": [1.0] * len(PUNCTUATION), "sentence_end_id": 3},
        "encoder": "SANMEncoder",
        "encoder_conf": {
            "input_size": width, "output_size": width, "attention_heads": heads,
            "linear_units": units, "num_blocks": blocks or (6 if size == "full" else 1),
            **_dropouts("dropout_rate", "positional_dropout_rate"),
            "attention_dropout_rate": 0.0, "input_layer": "pe",
            "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
            "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm",
            "padding_idx": 0},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": UNKNOWN},
    }
    model = build_module(config, vocab_size=len(tokens))
    with torch.no_grad():
        model.decoder.weight.mul_(4.0)
        # log-odds per mark: never <unk>, mostly none, now and then ，。？、
        model.decoder.bias.copy_(torch.tensor([-20.0, 2.5, 0.0, 0.0, -1.0, -1.0]))
    return write_folder(Path(out), config, model, tokens=tokens,
                        configuration_json=configuration_json)


# ----------------------------------------------------------------------------- speakers
def build_spk(out: str | Path, seed: int = 0, configuration_json: bool = True,
              size: str = "tiny") -> int:
    """CAM++ (``spk_model="cam++"``): ``tiny`` embeds in 32 dimensions, ``full`` in the
    hub model's 192."""
    torch.manual_seed(seed)
    dims = ({"embedding_size": 32, "growth_rate": 8, "bn_size": 2, "init_channels": 16}
            if size == "tiny" else
            {"embedding_size": 192, "growth_rate": 32, "bn_size": 4, "init_channels": 128})
    config = {"model": "CAMPPlus",
              "model_conf": {"feat_dim": 80, **dims, "config_str": "batchnorm-relu",
                             "memory_efficient": True, "output_level": "segment"}}
    model = build_module(config).eval()
    return write_folder(Path(out), config, model, configuration_json=configuration_json)


# ----------------------------------------------------------------------------- sets
def build_all(out_dir: str | Path, size: str = "tiny", seed: int = 0) -> dict[str, str]:
    """asr/, vad/ and punc/ under ``out_dir``, each built once."""
    builders = {"asr": lambda d: build_asr(d, "seaco", size, seed),
                "vad": lambda d: build_vad(d, seed), "punc": lambda d: build_punc(d, seed)}
    folders = {}
    for role, build in builders.items():
        folder = Path(out_dir) / role
        if not (folder / "model.pt").exists():
            build(folder)
        folders[role] = str(folder)
    return folders


def build_bench_models(root: str | Path) -> dict[str, str]:
    """The benchmarks' models under ``root``, each built once: a full-size SeACo-Paraformer
    (paraformer-zh's dimensions; its hotword head idle, as a trained one is where no
    hotword is spoken: ONNX graphs always run that path), fsmn-vad, a ct-punc-sized
    punctuation model and CAM++ at the hub's dimensions (its cost is what users pay)."""
    root = Path(root)
    folders = {"asr": root / "full" / "asr", "vad": root / "tiny" / "vad",
               "punc": root / "full" / "punc", "spk": root / "full" / "spk"}
    asr = folders["asr"]
    if not (asr / "idle_bias").exists():  # folders built before the idle head: again
        n, tokens = build_asr(asr, "seaco", "full", idle_bias=True)
        (asr / "idle_bias").touch()
        print(f"asr: {asr} params={n:,} vocab={tokens} (full size, random weights)",
              flush=True)
    if not (folders["vad"] / "model.pt").exists():
        build_vad(folders["vad"])
    if not (folders["punc"] / "model.pt").exists():
        n = build_punc(folders["punc"], size="full")
        print(f"punc: {folders['punc']} params={n:,} (ct-punc size, random weights)",
              flush=True)
    if not (folders["spk"] / "model.pt").exists():
        build_spk(folders["spk"], size="full")
    return {role: str(folder) for role, folder in folders.items()}


def check_loaded(module: torch.nn.Module, folder: str | Path) -> None:
    """Every tensor of ``folder``'s model.pt is in ``module`` and equal there (funasr
    keeps random weights for keys it cannot place, and says so only in a log line)."""
    saved = torch.load(Path(folder) / "model.pt", map_location="cpu")
    live = module.state_dict()
    unplaced = [k for k in saved if k not in live]
    assert not unplaced, f"keys not in the loaded model: {unplaced[:5]}"
    differ = [k for k, v in saved.items() if not torch.equal(live[k].cpu(), v)]
    assert not differ, f"did not load: {differ[:5]}"


def main() -> None:
    parser = argparse.ArgumentParser(description="random-weight funasr model folders")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--size", choices=sorted(ASR_SIZES), default="tiny")
    parser.add_argument("--arch", choices=["seaco", "bicif", "paraformer"], default="seaco",
                        help="seaco: paraformer-zh; bicif: paraformer-large-vad-punc; "
                             "paraformer: plain (no timestamps)")
    parser.add_argument("--only", choices=["asr", "vad", "punc", "spk"], action="append",
                        help="these only (repeatable; default all four)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--predictor-gain", type=float, default=0.01,
                        help="scale of the CIF predictor's output weights (see build_asr)")
    parser.add_argument("--no-configuration-json", action="store_true")
    args = parser.parse_args()
    from worker.engines.torch.patches import import_funasr

    import_funasr()  # as the worker imports it: 3 s, not 9
    hub_layout = not args.no_configuration_json
    for role in args.only or ["asr", "vad", "punc", "spk"]:
        started, folder = time.perf_counter(), args.out_dir / role
        if role == "asr":
            n, tokens = build_asr(folder, args.arch, args.size, args.seed, hub_layout,
                                  predictor_gain=args.predictor_gain)
            what = f"{args.arch} {args.size}, {tokens} tokens"
        elif role == "vad":
            n, what = build_vad(folder, args.seed, hub_layout), "FsmnVADStreaming"
        elif role == "punc":
            n, what = build_punc(folder, args.seed, hub_layout), "CTTransformer"
        else:
            n, what = build_spk(folder, args.seed, hub_layout), "CAMPPlus"
        mib = (folder / "model.pt").stat().st_size / 2**20
        print(f"{role}: {folder} {n:,} parameters, {mib:.1f} MiB, {what}, "
              f"{time.perf_counter() - started:.2f} s")


if __name__ == "__main__":
    main()
