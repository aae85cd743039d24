"""tingji's own result text (``worker.engines.onnx.text`` and ``.punctuation``) against
funasr's functions, which the torch engine runs: generated token, punctuation and
timestamp sequences, equal results or the same exception.  The end-to-end equality
(real clips through both engines) is ``tests/test_onnx.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.engines.onnx import punctuation
from worker.engines.onnx import text as onnx_text

postprocess = pytest.importorskip("funasr.utils.postprocess_utils")
timestamp_tools = pytest.importorskip("funasr.utils.timestamp_tools")
ct_utils = pytest.importorskip("funasr.models.ct_transformer.utils")
auto_model = pytest.importorskip("funasr.auto.auto_model")

# tokens of every kind the decoders emit, and some they should not (mixed pieces,
# control tokens inside pieces, bytes)
TOKENS = st.sampled_from([
    "中", "文", "你", "好", "一", "鿿", "㐀", "0", "7", "42", "@", "1a", "中a",
    "a", "b", "C", "x", "the", "ab@@", "c@@", "d", "'", "don't", "é", "ß",
    "，", "。", ",", ".", "?", " ", "a b", "<s>", "</s>", "<unk>", "<OOV>", "a<unk>",
    "<sil>", "",
]) | st.sampled_from(["ab", "中"]).map(str.encode)
LATIN = st.sampled_from(["a", "b", "c", "Z", "the", "cat", "ab@@", "x@@", "d", "'"])
SETTINGS = settings(max_examples=400, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def stamps(n: int) -> st.SearchStrategy[list[list[int]]]:
    return st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 500)),
                    min_size=n, max_size=n).map(lambda pairs: [[s, s + d] for s, d in pairs])


def outcome(fn: Any, *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - compared by type with the other side
        return ("raised", type(exc))


def kept(tokens: list[Any]) -> int:
    text = [t if isinstance(t, str) else t.decode() for t in tokens]
    return sum(t not in ("<s>", "</s>", "<unk>", "<OOV>") for t in text)


def same_postprocess(tokens: list[Any], times: list[list[int]] | None) -> None:
    theirs = outcome(postprocess.sentence_postprocess, list(tokens),
                     None if times is None else [list(t) for t in times])
    ours = outcome(onnx_text.tokens_to_text, list(tokens),
                   None if times is None else [list(t) for t in times])
    if ours[0] == "ok":
        text, stamps_out, words = ours[1]
        ours = ("ok", (text, words) if times is None else (text, stamps_out, words))
    assert ours == theirs, (tokens, times)


@SETTINGS
@given(st.lists(TOKENS, max_size=14), st.data())
def test_tokens_to_text_is_funasrs_sentence_postprocess(tokens: list[Any],
                                                        data: st.DataObject) -> None:
    same_postprocess(tokens, None)
    same_postprocess(tokens, data.draw(stamps(kept(tokens))))


@SETTINGS
@given(st.lists(LATIN | st.sampled_from(["中", "文", " "]), max_size=16), st.data())
def test_abbreviations_and_subwords_as_funasr(tokens: list[str], data: st.DataObject) -> None:
    """Spelled letters (``a b c``) and subword pieces, with and without Chinese."""
    same_postprocess(tokens, None)
    same_postprocess(tokens, data.draw(stamps(kept(tokens))))


@SETTINGS
@given(st.lists(TOKENS, max_size=10), st.integers(0, 3), st.data())
def test_mismatched_timestamps_fail_or_agree_as_funasr(tokens: list[Any], spare: int,
                                                       data: st.DataObject) -> None:
    n = max(0, kept(tokens) + data.draw(st.integers(-2, 2)))
    same_postprocess(tokens, data.draw(stamps(n + spare)))


WORDS = st.sampled_from(["中", "文", "好", "a", "Hello", "x'y", "42", "，", "@"])


@SETTINGS
@given(st.lists(WORDS, max_size=30), st.data())
def test_sentences_from_punctuation_are_funasrs_timestamp_sentence(
        words: list[str], data: st.DataObject) -> None:
    n = len(words) + data.draw(st.sampled_from([0, 0, 0, -1, 1]))
    marks = data.draw(st.none() | st.lists(st.integers(0, 5), min_size=max(n, 0),
                                           max_size=max(n, 0)))
    times = data.draw(stamps(max(0, len(words) + data.draw(st.sampled_from([0, 0, -1, 2])))))
    text = " ".join(words)
    assert outcome(onnx_text.sentences_from_punctuation, marks, times, text) == \
        outcome(timestamp_tools.timestamp_sentence, marks, times, text)


@SETTINGS
@given(st.lists(st.integers(0, 99), max_size=70), st.integers(2, 25))
def test_windows_are_funasrs_mini_sentences(items: list[int], size: int) -> None:
    assert punctuation.windows(items, size) == ct_utils.split_to_mini_sentence(items, size)


TEXT = st.lists(st.sampled_from(["今天", "天气", "好", "Hello", "world", "it's", "GPU", "3",
                                 "中a", "a中", "，", "ö"]), max_size=12).map(" ".join)


@SETTINGS
@given(TEXT)
def test_words_for_punctuation_are_funasrs_split_words(text: str) -> None:
    assert punctuation.words_for_punctuation(text) == ct_utils.split_words(text)


@settings(max_examples=100, deadline=None)
@given(TEXT)
def test_word_level_split_is_funasrs_with_jieba(text: str) -> None:
    jieba = pytest.importorskip("jieba")
    tokenizer = _jieba()
    assert jieba  # the package, for the tokenizer below
    assert punctuation.words_for_punctuation(text, tokenizer) == \
        ct_utils.split_words(text, jieba_usr_dict=tokenizer)


_TOKENIZER: Any = None


def _jieba() -> Any:
    global _TOKENIZER
    if _TOKENIZER is None:
        import jieba
        _TOKENIZER = jieba.Tokenizer()
    return _TOKENIZER


SEGMENT_TEXT = st.sampled_from(["", " ", "你好", "世界", "hello", "<|zh|>中文", "<|en|>",
                                "㐀", "a中", "中a", " 好 "])


@SETTINGS
@given(st.lists(SEGMENT_TEXT, max_size=8))
def test_join_segment_texts_is_funasrs(texts: list[str]) -> None:
    assert onnx_text.join_segment_texts(texts) == auto_model._join_vad_texts(texts)


STAMP_ITEM = (st.tuples(st.integers(0, 9999), st.integers(0, 9999)).map(list)
              | st.fixed_dictionaries({"start_time": st.floats(0, 99).map(str),
                                       "end_time": st.floats(0, 99) | st.none()})
              | st.just([5]))


@SETTINGS
@given(st.lists(st.fixed_dictionaries(
    {"text": SEGMENT_TEXT},
    optional={"timestamp": st.none() | st.lists(STAMP_ITEM, max_size=4),
              "timestamps": st.lists(STAMP_ITEM, max_size=4)}), max_size=5),
    st.lists(st.tuples(st.integers(0, 9999), st.integers(0, 9999)).map(list), max_size=6))
def test_sentences_from_segments_are_funasrs(results: list[dict[str, Any]],
                                             segments: list[list[int]]) -> None:
    assert onnx_text.sentences_from_segments(results, segments) == \
        auto_model._vad_segment_sentences(results, segments)


def test_seg_dict_reads_as_funasr_and_skips_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "seg_dict"
    path.write_text("你好 你 好\nhello he@@ llo\nx\n", encoding="utf-8")
    from funasr.tokenizer.char_tokenizer import load_seg_dict

    assert punctuation.read_seg_dict(path) == load_seg_dict(str(path))
    path.write_text("你好 你 好\n\nab a b\n", encoding="utf-8")
    assert punctuation.read_seg_dict(path) == {"你好": "你 好", "ab": "a b"}


# ----------------------------------------------------------------------------- punctuation
PUNC_LIST = ["<unk>", "_", "，", "。", "？", "、"]
PUNC_WORDS = st.sampled_from(["今", "天", "好", "今天", "天气", "hello", "GPU", "it's", "a", "3",
                              "中a", "ö", "很好"])


def _marks_from(seed: int, stop_rate: int) -> Any:
    """A deterministic stand-in for the model: the mark of each position from the ids
    around it, so a carried word can be marked differently in the next window."""
    def marks(ids: Any) -> list[int]:
        out = []
        for i in range(len(ids)):
            h = (seed * 1_000_003 + int(sum(ids[max(0, i - 2):i + 1])) * 7919 + i) % 97
            out.append(3 if h < stop_rate else 2 if h < stop_rate + 20 else
                       5 if h < stop_rate + 25 else 0 if h == 96 else 1)
        return out
    return marks


def _funasr_punctuate(words_text: str, marks: Any, word_level: Any) -> tuple[str, list[int]]:
    import types

    import torch
    from funasr.models.ct_transformer.model import CTTransformer

    def punc_forward(text: Any, text_lengths: Any) -> Any:
        found = marks(text[0].numpy())
        return torch.nn.functional.one_hot(torch.tensor(found), len(PUNC_LIST))[None], None

    fake = types.SimpleNamespace(punc_list=PUNC_LIST, sentence_end_id=3,
                                 jieba_usr_dict=word_level, punc_forward=punc_forward)
    vocab: dict[str, int] = {}
    tokenizer = types.SimpleNamespace(
        encode=lambda toks: [vocab.setdefault(t, len(vocab) + 4) for t in toks])
    res, _ = CTTransformer.inference(fake, [words_text], key=["k"], tokenizer=tokenizer,
                                     device="cpu")
    return res[0]["text"], [int(x) for x in np.asarray(res[0]["punc_array"]).reshape(-1)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PUNC_WORDS, min_size=1, max_size=70), st.integers(0, 10**6),
       st.sampled_from([0, 2, 10]), st.booleans())
def test_punctuate_is_funasrs_ct_transformer_inference(words: list[str], seed: int,
                                                       stop_rate: int, jieba: bool) -> None:
    marks = _marks_from(seed, stop_rate)
    segmenter = _jieba() if jieba else None
    text = " ".join(words)
    theirs = _funasr_punctuate(text, marks, segmenter)
    split = punctuation.words_for_punctuation(text, segmenter)
    vocab: dict[str, int] = {}
    ids = [vocab.setdefault(t, len(vocab) + 4) for t in split]
    ours_text, ours_marks = punctuation.punctuate(split, ids, marks, PUNC_LIST, 3,
                                                word_level=jieba)
    assert (ours_text, ours_marks.tolist()) == theirs


def test_a_long_carry_is_cut_at_a_comma_as_funasr() -> None:
    """250 words without a full stop: the carry passes 200 words and is cut at its last
    comma, which becomes a full stop, on both sides."""
    def commas(ids: Any) -> list[int]:
        return [2 if i % 7 == 6 else 1 for i in range(len(ids))]

    words = ["好"] * 250
    theirs = _funasr_punctuate(" ".join(words), commas, None)
    ours = punctuation.punctuate(words, [5] * 250, commas, PUNC_LIST, 3)
    assert (ours[0], ours[1].tolist()) == theirs
    assert theirs[1].count(3) >= 2  # a cut inside, and the final stop


HOTWORD = st.sampled_from(["你好", "世界", "GPU", "gpu", "達", "12", "3a", "魔搭", "x", "听记"])


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(HOTWORD, min_size=1, max_size=3), min_size=1, max_size=4))
def test_hotword_spelling_is_seaco_paraformers(tmp_path: Path, lines: list[list[str]]) -> None:
    """The ONNX engine's spelling of a hotword file with a ``seg_dict`` (whole words it
    knows, Chinese words character by character, ``<unk>`` otherwise) against
    ``SeacoParaformer.generate_hotwords_list``."""
    import types

    from funasr.models.seaco_paraformer.model import SeacoParaformer

    from worker.engines.onnx.models import hotword_tokens

    (tmp_path / "seg_dict").write_text("你好 你 好\ngpu g@@ p@@ u\n世 世\n界 界\n听 听\n",
                                       encoding="utf-8")
    (tmp_path / "am.mvn").write_text("", encoding="utf-8")
    hotwords = tmp_path / "hotwords.txt"
    hotwords.write_text("".join(" ".join(words) + "\n" for words in lines), encoding="utf-8")
    fake = types.SimpleNamespace(sos=1)
    theirs = SeacoParaformer.generate_hotwords_list(
        fake, str(hotwords), tokenizer=types.SimpleNamespace(tokens2ids=list),
        frontend=types.SimpleNamespace(cmvn_file=str(tmp_path / "am.mvn")))
    seg = punctuation.read_seg_dict(tmp_path / "seg_dict")
    assert [hotword_tokens(words, seg) for words in lines] + [[1]] == theirs
