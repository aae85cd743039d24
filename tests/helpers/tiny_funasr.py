"""Build random-weight FunASR model directories that ``funasr.AutoModel`` loads
offline exactly like ModelScope snapshots (no hub, no network).

Writes, under OUT_DIR:
  asr/   Paraformer-family ASR model (default: SeacoParaformer, the class that
         ``paraformer-zh`` resolves to on ModelScope; CifPredictorV3 -> timestamps)
  vad/   FSMN-VAD (FsmnVADStreaming, real fsmn-vad dimensions) whose weights are
         set by hand to an energy detector, so it really segments on silence
  punc/  CT-Transformer punctuation model (CTTransformer), tiny, random weights

Each directory holds: config.yaml, model.pt (a plain state_dict), tokens.json
(asr/punc), am.mvn (asr/vad, Kaldi nnet1 text CMVN) and configuration.json
(same file_path_metas layout as the hub snapshots; --no-configuration-json omits it,
which makes funasr take its config.yaml fallback branch instead).

Adapted from ../shared/tools/make_tiny_funasr.py for tingji's tests and benchmarks:
``build_all(out)`` builds the three folders once and ``check_loaded`` proves the saved
weights really loaded (funasr silently keeps random weights for missing keys).

Usage:
  python -m tests.helpers.tiny_funasr OUT_DIR                       # tiny asr + vad + punc
  python -m tests.helpers.tiny_funasr OUT_DIR --size full --only asr   # Paraformer-large dims

Load (offline):
  from funasr import AutoModel
  m = AutoModel(model=f"{OUT}/asr", vad_model=f"{OUT}/vad", punc_model=f"{OUT}/punc",
                device="cpu", ncpu=2, disable_update=True, disable_pbar=True)
  m.generate(input="clip.wav")   # -> [{"key", "text", "timestamp", ...}]
"""

import argparse
import json
import math
import os
import time

import torch
import yaml

# 400 most frequent characters of jieba's dictionary, plus the demo sentence's.
COMMON_CHARS = (
    "今天气很好我们去公园散步"
    "一是人了不在有大中国和为这上他个地年来我会以到时要出的生学说道民家子也成行下们于后就发"
    "自之对得主长可过天作分方用多你着部能市等业全里工公经本都而高政法面门动日进区事代那去心"
    "小同北定开产前其军还然起种所如现理机体表力好外与文当两实重新三么只山水关明从化平建又制"
    "南内西没此将员名手最东头者月间无安看见各城十相但已些正口通想度加第她合院物性战由位常点"
    "海意场武使次二向治因立数样身情入原问把路被并利石老教万知级量任江及应省资委务元美特期世"
    "湖回系比气汉总展电科金先声提品设或义王社很统处四首共马形己儿司太目基领队直计别女权话少"
    "流命至报米给打变果书清活几州华解议更称程今决张导术府才保交放管结师便走达族反再题色五京"
    "河接条规式县白它改风光运信受什组听布百济党指论强做取技黄神选记斯真却职号界件花类何眼兵"
    "传带空干农边据集联古广完质阳难增历史专官每住商即步认车台林必死游举线言皇土团收考求德叫"
    "近备研争非具李众连调感转笑"
)

SIZES = {
    # a few MB; loads in well under a second
    "tiny": dict(d=64, heads=4, enc_units=128, enc_blocks=2, dec_units=128, dec_blocks=1,
                 dec_att=1, seaco_units=64, seaco_blocks=1, seaco_att=1, vocab=None),
    # the hub's widths (what funasr's ONNX exporter assumes: 512-dim, vocabulary 8404),
    # two encoder blocks, one decoder block, the six the hotword decoder's export reads
    "narrow": dict(d=512, heads=4, enc_units=256, enc_blocks=2, dec_units=256, dec_blocks=1,
                   dec_att=1, seaco_units=128, seaco_blocks=1, seaco_att=6, vocab=8404),
    # Paraformer-large / SeACo-Paraformer-large dimensions (FunASR template.yaml)
    "full": dict(d=512, heads=4, enc_units=2048, enc_blocks=50, dec_units=2048, dec_blocks=16,
                 dec_att=16, seaco_units=1024, seaco_blocks=4, seaco_att=6, vocab=8404),
}

SPECIALS_HEAD = ["<blank>", "<s>", "</s>"]  # ids 0,1,2 = blank_id, sos, eos (Paraformer defaults)
UNK = "<unk>"                               # last id, as in the hub tokens.json


def make_vocab(size=None):
    chars = list(dict.fromkeys(COMMON_CHARS))  # dedupe, keep order
    if size is not None:
        need = size - len(SPECIALS_HEAD) - 1
        cp = 0x4E00
        seen = set(chars)
        while len(chars) < need:
            c = chr(cp)
            if c not in seen and not 0xD800 <= cp <= 0xDFFF:  # no lone surrogates
                chars.append(c)
                seen.add(c)
            cp += 1
        chars = chars[:need]
    return SPECIALS_HEAD + chars + [UNK]


def write_cmvn(path, dim, shift, scale):
    """Kaldi nnet1 text CMVN as read by funasr.frontends.wav_frontend.load_cmvn."""
    s = " ".join(f"{shift:.6f}" for _ in range(dim))
    r = " ".join(f"{scale:.6f}" for _ in range(dim))
    with open(path, "w", encoding="utf-8") as f:
        f.write("<Nnet>\n")
        f.write(f"<Splice> {dim} {dim}\n[ 0 ]\n")
        f.write(f"<AddShift> {dim} {dim}\n<LearnRateCoef> 0 [ {s} ]\n")
        f.write(f"<Rescale> {dim} {dim}\n<LearnRateCoef> 0 [ {r} ]\n")
        f.write("</Nnet>\n")


def write_common(out, cfg, tokens=None, cmvn=None, configuration_json=True):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.yaml"), "w", encoding="utf-8") as f:
        yaml.safe_dump(cfg, f, allow_unicode=True, sort_keys=False)
    metas = {"init_param": "model.pt", "config": "config.yaml"}
    if tokens is not None:
        with open(os.path.join(out, "tokens.json"), "w", encoding="utf-8") as f:
            json.dump(tokens, f, ensure_ascii=False, indent=0)
        metas["tokenizer_conf"] = {"token_list": "tokens.json"}
    if cmvn is not None:
        write_cmvn(os.path.join(out, "am.mvn"), *cmvn)
        metas["frontend_conf"] = {"cmvn_file": "am.mvn"}
    if configuration_json:
        with open(os.path.join(out, "configuration.json"), "w", encoding="utf-8") as f:
            json.dump({"framework": "pytorch", "task": "auto-speech-recognition",
                       "model": {"type": "funasr"}, "file_path_metas": metas}, f, indent=2)


def instantiate(cfg, **extra):
    """Build the nn.Module the same way funasr.AutoModel.build_model does."""
    import funasr  # noqa: F401  (registers all classes)
    from funasr.register import tables

    kwargs = dict(cfg)
    kwargs.update(extra)
    model_conf = dict(cfg.get("model_conf", {}))
    model_conf.update(kwargs)
    return tables.model_classes.get(cfg["model"])(**model_conf)


def save(model, out):
    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    torch.save(sd, os.path.join(out, "model.pt"))
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- ASR
def asr_config(arch, size, vocab_size):
    z = SIZES[size]
    d = z["d"]
    cfg = {"model": {"seaco": "SeacoParaformer", "bicif": "BiCifParaformer",
                     "paraformer": "Paraformer"}[arch]}
    cfg["model_conf"] = {"ctc_weight": 0.0, "lsm_weight": 0.1, "length_normalized_loss": True,
                         "predictor_weight": 1.0, "predictor_bias": 1, "sampling_ratio": 0.75}
    if arch == "seaco":
        cfg["model_conf"].update({"inner_dim": d, "bias_encoder_type": "lstm",
                                  "bias_encoder_bid": False, "seaco_lsm_weight": 0.1,
                                  "seaco_length_normal": True, "train_decoder": False,
                                  "NO_BIAS": 8377 if vocab_size == 8404 else vocab_size - 2})
    cfg["encoder"] = "SANMEncoder"
    cfg["encoder_conf"] = {"output_size": d, "attention_heads": z["heads"],
                           "linear_units": z["enc_units"], "num_blocks": z["enc_blocks"],
                           "dropout_rate": 0.1, "positional_dropout_rate": 0.1,
                           "attention_dropout_rate": 0.1, "input_layer": "pe",
                           "pos_enc_class": "SinusoidalPositionEncoder", "normalize_before": True,
                           "kernel_size": 11, "sanm_shfit": 0, "selfattention_layer_type": "sanm"}
    cfg["decoder"] = "ParaformerSANMDecoder"
    cfg["decoder_conf"] = {"attention_heads": z["heads"], "linear_units": z["dec_units"],
                           "num_blocks": z["dec_blocks"], "dropout_rate": 0.1,
                           "positional_dropout_rate": 0.1, "self_attention_dropout_rate": 0.1,
                           "src_attention_dropout_rate": 0.1, "att_layer_num": z["dec_att"],
                           "kernel_size": 11, "sanm_shfit": 0}
    if arch == "seaco":
        cfg["seaco_decoder"] = "ParaformerSANMDecoder"
        cfg["seaco_decoder_conf"] = {"attention_heads": z["heads"],
                                     "linear_units": z["seaco_units"],
                                     "num_blocks": z["seaco_blocks"],
                                     "att_layer_num": z["seaco_att"], "dropout_rate": 0.1,
                                     "positional_dropout_rate": 0.1,
                                     "self_attention_dropout_rate": 0.1,
                                     "src_attention_dropout_rate": 0.1, "kernel_size": 21,
                                     "sanm_shfit": 0, "use_output_layer": False,
                                     "wo_input_layer": True}
    if arch == "paraformer":
        cfg["predictor"] = "CifPredictorV2"
        cfg["predictor_conf"] = {"idim": d, "threshold": 1.0, "l_order": 1, "r_order": 1,
                                 "tail_threshold": 0.45}
    else:
        cfg["predictor"] = "CifPredictorV3"
        cfg["predictor_conf"] = {"idim": d, "threshold": 1.0, "l_order": 1, "r_order": 1,
                                 "tail_threshold": 0.45, "smooth_factor2": 0.25,
                                 "noise_threshold2": 0.01, "upsample_times": 3,
                                 "use_cif1_cnn": False, "upsample_type": "cnn_blstm"}
    cfg["frontend"] = "WavFrontend"
    cfg["frontend_conf"] = {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                            "frame_shift": 10, "lfr_m": 7, "lfr_n": 6, "dither": 0.0}
    cfg["specaug"] = "SpecAugLFR"  # as in the hub config; inactive in eval()
    cfg["specaug_conf"] = {"apply_time_warp": False, "time_warp_window": 5,
                           "time_warp_mode": "bicubic", "apply_freq_mask": True,
                           "freq_mask_width_range": [0, 30], "lfr_rate": 6, "num_freq_mask": 1,
                           "apply_time_mask": True, "time_mask_width_range": [0, 12],
                           "num_time_mask": 1}
    cfg["tokenizer"] = "CharTokenizer"
    cfg["tokenizer_conf"] = {"unk_symbol": UNK, "split_with_space": True}
    cfg["input_size"] = 560
    cfg["normalize"] = None
    return cfg


def build_asr(out, arch="seaco", size="tiny", seed=0, configuration_json=True,
              token_rate=0.27, predictor_gain=0.01, idle_bias=False):
    """``idle_bias`` (SeACo): the hotword head predicts "no bias" everywhere, as a trained
    model does without hotwords, so a graph that always runs the bias path (funasr's
    ONNX export) decodes what the plain decoder does.

    ``predictor_gain`` scales the CIF predictor's output weights: at 0.01 the firing
    rate barely depends on the audio (steady, speech-like token rates); larger gains make
    the firing weights, and so the text's length and timestamps, follow the encoder output
    closely, which is what tests of padding and batching need to be sensitive."""
    torch.manual_seed(seed)
    tokens = make_vocab(SIZES[size]["vocab"])
    cfg = asr_config(arch, size, len(tokens))
    write_common(out, cfg, tokens, cmvn=(560, -12.0, 0.2), configuration_json=configuration_json)
    model = instantiate(cfg, vocab_size=len(tokens), input_size=560)
    with torch.no_grad():
        # CIF predictor: near-constant firing rate (~token_rate tokens per 60 ms LFR frame,
        # ~4.5 tokens/s like Mandarin speech) instead of whatever random init gives.
        p = model.predictor
        p.cif_output.weight.mul_(predictor_gain)
        p.cif_output.bias.fill_(math.log(token_rate / (1 - token_rate)))
        if hasattr(p, "cif_output2"):
            r2 = token_rate / getattr(p, "upsample_times", 3)
            p.cif_output2.weight.mul_(predictor_gain)
            p.cif_output2.bias.fill_(math.log(r2 / (1 - r2)) + 0.0)
        # never emit <blank>/<s>/</s>/<unk>, so text is never empty
        b = model.decoder.output_layer.bias
        for i in (0, 1, 2, len(tokens) - 1):
            b[i] = -20.0
        if idle_bias and arch == "seaco":
            model.hotword_output_layer.bias[model.NO_BIAS] = 50.0
    n = save(model, out)
    return n, len(tokens)


# ----------------------------------------------------------------------------- VAD
def build_vad(out, seed=0, configuration_json=True, threshold=8.0, k=0.25):
    """Real fsmn-vad dimensions; weights hand-set so that speech posterior rises with the
    mean log-mel energy of the 5-frame LFR window (identity CMVN)."""
    torch.manual_seed(seed)
    cfg = {
        "model": "FsmnVADStreaming",
        "model_conf": {"sample_rate": 16000, "detect_mode": 1, "snr_mode": 0,
                       "max_end_silence_time": 800, "max_start_silence_time": 3000,
                       "do_start_point_detection": True, "do_end_point_detection": True,
                       "window_size_ms": 200, "sil_to_speech_time_thres": 150,
                       "speech_to_sil_time_thres": 150, "speech_2_noise_ratio": 1.0,
                       "do_extend": 1, "lookback_time_start_point": 200,
                       "lookahead_time_end_point": 100, "max_single_segment_time": 60000,
                       "snr_thres": -100.0, "noise_frame_num_used_for_snr": 100,
                       "decibel_thres": -100.0, "speech_noise_thres": 0.6,
                       "fe_prior_thres": 0.0001, "silence_pdf_num": 1, "sil_pdf_ids": [0],
                       "speech_noise_thresh_low": -0.1, "speech_noise_thresh_high": 0.3,
                       "output_frame_probs": False, "frame_in_ms": 10, "frame_length_ms": 25},
        "encoder": "FSMN",
        "encoder_conf": {"input_dim": 400, "input_affine_dim": 140, "fsmn_layers": 4,
                         "linear_dim": 250, "proj_dim": 128, "lorder": 20, "rorder": 0,
                         "lstride": 1, "rstride": 0, "output_affine_dim": 140,
                         "output_dim": 248},
        "frontend": "WavFrontendOnline",
        "frontend_conf": {"fs": 16000, "window": "hamming", "n_mels": 80, "frame_length": 25,
                          "frame_shift": 10, "dither": 0.0, "lfr_m": 5, "lfr_n": 1},
    }
    write_common(out, cfg, None, cmvn=(400, 0.0, 1.0), configuration_json=configuration_json)
    model = instantiate(cfg)
    enc = model.encoder
    with torch.no_grad():
        for prm in enc.parameters():
            prm.zero_()
        enc.in_linear1.linear.weight[0, :] = 1.0 / 400      # x = mean log-mel
        enc.in_linear1.linear.bias[0] = -threshold          # x - thr
        enc.in_linear2.linear.weight[0, 0] = 1.0            # relu(x - thr): speech evidence
        enc.in_linear2.linear.weight[1, 0] = -1.0           # relu(thr - x): silence evidence
        for blk in enc.fsmn:                                # identity pass-through of ch 0,1
            blk.linear.linear.weight[0, 0] = blk.linear.linear.weight[1, 1] = 1.0
            blk.affine.linear.weight[0, 0] = blk.affine.linear.weight[1, 1] = 1.0
        enc.out_linear1.linear.weight[0, 0] = enc.out_linear1.linear.weight[1, 1] = 1.0
        w, b = enc.out_linear2.linear.weight, enc.out_linear2.linear.bias
        w[0, 0], w[0, 1] = -k, k                            # pdf 0 = silence
        w[1, 0], w[1, 1] = k, -k                            # pdf 1 = speech
        b[2:] = -10.0                                       # other pdfs negligible (never 0)
    return save(model, out)


# ----------------------------------------------------------------------------- PUNC
# ct-punc (punc_ct-transformer_cn-en-common-vocab471067-large): its vocabulary is in the
# name; its widths are inferred, not read from the hub's config.yaml (unreachable here):
# 512-wide, 8 heads, 2048 feed-forward units and 6 blocks give 260 M parameters and a
# 1.04 GB model.pt, against the hub checkpoint's 1.05 GB (the 471,067 x 512 embedding alone
# is 0.96 GB, so the width is 512; the blocks make up the rest).
PUNC_SIZES = {
    "tiny": dict(d=64, heads=4, units=128, vocab=None),
    "full": dict(d=512, heads=8, units=2048, vocab=471067),
}


def build_punc(out, seed=0, configuration_json=True, blocks=None, size="tiny"):
    """``blocks``: 2 or more for funasr's ONNX exporter (it reads the second stack);
    default 1 (tiny) or 6 (full)."""
    torch.manual_seed(seed)
    z = PUNC_SIZES[size]
    blocks = blocks or (6 if size == "full" else 1)
    tokens = make_vocab(z["vocab"])
    punc_list = ["<unk>", "_", "，", "。", "？", "、"]
    d = z["d"]
    cfg = {
        "model": "CTTransformer",
        "model_conf": {"ignore_id": 0, "embed_unit": d, "att_unit": d, "dropout_rate": 0.1,
                       "punc_list": punc_list, "punc_weight": [1.0] * 6, "sentence_end_id": 3},
        "encoder": "SANMEncoder",
        "encoder_conf": {"input_size": d, "output_size": d, "attention_heads": z["heads"],
                         "linear_units": z["units"], "num_blocks": blocks, "dropout_rate": 0.1,
                         "positional_dropout_rate": 0.1, "attention_dropout_rate": 0.0,
                         "input_layer": "pe", "pos_enc_class": "SinusoidalPositionEncoder",
                         "normalize_before": True, "kernel_size": 11, "sanm_shfit": 0,
                         "selfattention_layer_type": "sanm", "padding_idx": 0},
        "tokenizer": "CharTokenizer",
        "tokenizer_conf": {"unk_symbol": UNK},
    }
    write_common(out, cfg, tokens, cmvn=None, configuration_json=configuration_json)
    model = instantiate(cfg, vocab_size=len(tokens))
    with torch.no_grad():
        model.decoder.weight.mul_(4.0)
        # mostly "_" (no punctuation), sometimes "，"/"。"/"？"/"、", never "<unk>"
        model.decoder.bias.copy_(torch.tensor([-20.0, 2.5, 0.0, 0.0, -1.0, -1.0]))
    return save(model, out)


# ----------------------------------------------------------------------------- speakers
def build_spk(out, seed=0, configuration_json=True, size="tiny"):
    """CAM++ (funasr's CAMPPlus, what ``spk_model="cam++"`` loads): random speaker
    embeddings through the real feature and clustering code; ``tiny`` has narrow layers
    (32-dimensional embeddings), ``full`` the hub model's dimensions (192)."""
    torch.manual_seed(seed)
    conf = {"feat_dim": 80, "embedding_size": 32, "growth_rate": 8, "bn_size": 2,
            "init_channels": 16} if size == "tiny" else \
        {"feat_dim": 80, "embedding_size": 192, "growth_rate": 32, "bn_size": 4,
         "init_channels": 128}
    cfg = {"model": "CAMPPlus",
           "model_conf": {**conf, "config_str": "batchnorm-relu", "memory_efficient": True,
                          "output_level": "segment"}}
    write_common(out, cfg, configuration_json=configuration_json)
    model = instantiate(cfg)
    model.eval()
    return save(model, out)


def build_all(out_dir: str, size: str = "tiny", seed: int = 0) -> dict[str, str]:
    """Build asr/, vad/ and punc/ under ``out_dir`` (skipping folders already built)."""
    dirs = {}
    for which in ("asr", "vad", "punc"):
        d = os.path.join(out_dir, which)
        dirs[which] = d
        if os.path.exists(os.path.join(d, "model.pt")):
            continue
        if which == "asr":
            build_asr(d, "seaco", size, seed)
        elif which == "vad":
            build_vad(d, seed)
        else:
            build_punc(d, seed)
    return dirs


def build_bench_models(root: str) -> dict[str, str]:
    """The benchmarks' models under ``root`` (built once): the full-size random-weight
    SeACo-Paraformer (paraformer-zh dimensions), a ct-punc-sized punctuation model and
    CAM++, with the VAD (fsmn-vad's own dimensions, hand-set weights)."""
    full, tiny = os.path.join(root, "full", "asr"), os.path.join(root, "tiny")
    # idle_bias: the hotword head says "no bias" where no hotword is spoken, as a
    # trained one does (ONNX graphs always run that path; torch skips it without
    # hotwords); the marker rebuilds folders made before
    if not os.path.exists(os.path.join(full, "idle_bias")):
        n, v = build_asr(full, "seaco", "full", idle_bias=True)
        open(os.path.join(full, "idle_bias"), "w").close()
        print(f"asr: {full} params={n:,} vocab={v} (full size, random weights)", flush=True)
    dirs = {"asr": full}
    d = dirs["vad"] = os.path.join(tiny, "vad")
    if not os.path.exists(os.path.join(d, "model.pt")):
        build_vad(d)
    d = dirs["punc"] = os.path.join(root, "full", "punc")
    if not os.path.exists(os.path.join(d, "model.pt")):
        n = build_punc(d, size="full")
        print(f"punc: {d} params={n:,} (ct-punc size, random weights)", flush=True)
    spk = dirs["spk"] = os.path.join(root, "full", "spk")
    if not os.path.exists(os.path.join(spk, "model.pt")):
        build_spk(spk, size="full")  # CAM++ dimensions: its cost is what users pay
    return dirs


def check_loaded(module, folder: str) -> None:
    """Every tensor saved in ``folder``/model.pt equals the loaded module's."""
    saved = torch.load(os.path.join(folder, "model.pt"), map_location="cpu")
    live = module.state_dict()
    missing = [k for k in saved if k not in live]
    assert not missing, f"keys not in the loaded model: {missing[:5]}"
    for k, v in saved.items():
        assert torch.equal(live[k].cpu(), v), f"{k} did not load"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--size", choices=sorted(SIZES), default="tiny")
    ap.add_argument("--arch", choices=["seaco", "bicif", "paraformer"], default="seaco",
                    help="seaco = paraformer-zh (ModelScope); bicif = paraformer-large-vad-punc;"
                         " paraformer = plain Paraformer (CifPredictorV2, no timestamps)")
    ap.add_argument("--only", choices=["asr", "vad", "punc", "spk"], action="append",
                    help="build only these (repeatable); default: all four")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--predictor-gain", type=float, default=0.01,
                    help="scale of the CIF predictor's output weights (see build_asr)")
    ap.add_argument("--no-configuration-json", action="store_true")
    a = ap.parse_args()
    which = a.only or ["asr", "vad", "punc", "spk"]
    cj = not a.no_configuration_json
    for w in which:
        t = time.perf_counter()
        d = os.path.join(a.out_dir, w)
        if w == "asr":
            n, v = build_asr(d, a.arch, a.size, a.seed, cj, predictor_gain=a.predictor_gain)
            extra = f"arch={a.arch} size={a.size} vocab={v}"
        elif w == "vad":
            n, extra = build_vad(d, a.seed, cj), "FsmnVADStreaming"
        elif w == "spk":
            n, extra = build_spk(d, a.seed, cj), "CAMPPlus"
        else:
            n, extra = build_punc(d, a.seed, cj), "CTTransformer"
        mb = os.path.getsize(os.path.join(d, "model.pt")) / 2**20
        print(f"{w}: {d} params={n:,} model.pt={mb:.1f}MiB {extra} "
              f"built in {time.perf_counter() - t:.2f}s")


if __name__ == "__main__":
    main()
