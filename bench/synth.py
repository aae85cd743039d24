"""Synthetic Mandarin speech for the trained fixture (``bench/train_fixture.py``).

Sentences are drawn from jieba's dictionary; espeak-ng's pinyin voice speaks them with
Mandarin tones (its ``cmn`` voice reads most characters as pinyin followed by the tone
digit in English, "tian one", which is why the text goes to it as pinyin); the audio is
then degraded with gain, a synthetic room and noise.

Speech synthesis says one sound per pinyin syllable, so two characters that share a
syllable and tone cannot be told apart by ear.  The vocabulary therefore holds one
character per syllable, tones aside (the most frequent in jieba's dictionary), and words
are taken from the dictionary only where every character is in it with the reading it
has alone.  The speech keeps its tones; the model need not tell two tones of one
syllable apart: with one character per syllable-and-tone, the recipe's model reached CER
0.19 on held-out speech of which 0.06 was not tones (a character's syllable wrong), and
it spent what it learned on the vowels and consonants, as it should, before the pitch
contours that espeak-ng draws at varied pitches and speeds.  What the model must learn
is then the acoustics of syllables, and the CER it reaches says how well it learned
them.

The held-out split differs from training in its seeds (sentences and noise), speaking
rates, pitches and noise colour.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import tempfile
import wave
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

RATE = 16_000
VOICE = "cmn-latn-pinyin"
# espeak-ng's voice variants (formants, breath, pitch range): nine speakers
VARIANTS = ["", "+m1", "+m2", "+m4", "+m7", "+f1", "+f2", "+f4", "+f5"]
# one character per syllable (tones aside), the most frequent: 200 make 2,497 words
CHARACTERS = 200


@dataclass(frozen=True)
class Split:
    speeds: tuple[int, ...]  # espeak-ng words per minute
    pitches: tuple[int, ...]  # 0-99
    noise: tuple[str, ...]  # colours
    snr_db: tuple[float, float]
    seed: int


TRAIN = Split(speeds=(125, 140, 155, 165, 185, 200, 215), pitches=(25, 35, 45, 55, 65, 75),
              noise=("white", "pink"), snr_db=(18.0, 40.0), seed=1)
# rates, pitches and noise not heard in training, drawn from other seeds
HELD_OUT = Split(speeds=(147, 177, 207), pitches=(40, 60, 70), noise=("brown",),
                 snr_db=(20.0, 35.0), seed=2)


@dataclass(frozen=True)
class Utterance:
    key: str
    text: str  # characters, no spaces
    pinyin: str  # what espeak-ng is given
    voice: str
    speed: int
    pitch: int
    gap: int  # espeak-ng's word gap, 10 ms units
    gain_db: float
    room_s: float  # RT60 of the synthetic room, 0 for none
    noise: str
    snr_db: float


# ----------------------------------------------------------------------------- text
def _dictionary() -> list[tuple[str, int]]:
    import jieba

    path = Path(jieba.__file__).parent / "dict.txt"
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        word, freq, *_ = line.split(" ")
        if all("\u4e00" <= ch <= "\u9fff" for ch in word):
            rows.append((word, int(freq)))
    return rows


def _reading(text: str) -> list[str]:
    from pypinyin import Style, lazy_pinyin

    return lazy_pinyin(text, style=Style.TONE3, neutral_tone_with_five=True)


@cache
def vocabulary(size: int = CHARACTERS) -> dict[str, str]:
    """``size`` characters, one per syllable whatever its tone, most frequent first:
    {char: pinyin with tone digit}."""
    singles = sorted(((w, f) for w, f in _dictionary() if len(w) == 1), key=lambda r: -r[1])
    chosen: dict[str, str] = {}
    taken: set[str] = set()
    for ch, _ in singles:
        (syllable,) = _reading(ch)
        if not syllable[-1].isdigit() or syllable[:-1] in taken:
            continue
        taken.add(syllable[:-1])
        chosen[ch] = syllable
        if len(chosen) == size:
            break
    return chosen


@cache
def lexicon(size: int = CHARACTERS, min_freq: int = 20
            ) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Words of 1-4 characters all in the vocabulary, read as their characters are read
    alone, with sampling weights (frequency to the 0.3, flattening the head)."""
    vocab = vocabulary(size)
    words, weights = [], []
    for word, freq in _dictionary():
        if len(word) > 4 or freq < min_freq or any(ch not in vocab for ch in word):
            continue
        if len(word) > 1 and _reading(word) != [vocab[ch] for ch in word]:
            continue
        words.append(word)
        weights.append(freq ** 0.3)
    return tuple(words), tuple(weights)


def sentence(rng: random.Random, size: int = CHARACTERS) -> str:
    """A sentence of 6-16 characters from the lexicon."""
    words, weights = lexicon(size)
    target = rng.randint(6, 16)
    text = ""
    while len(text) < target:
        text += rng.choices(words, weights)[0]
    return text[:16]


def utterances(split: Split, count: int, prefix: str, size: int = CHARACTERS
               ) -> Iterator[Utterance]:
    rng = random.Random(split.seed)
    vocab = vocabulary(size)
    for i in range(count):
        text = sentence(rng, size)
        yield Utterance(
            key=f"{prefix}{i:05d}", text=text,
            pinyin=" ".join(vocab[ch] for ch in text),
            voice=VOICE + rng.choice(VARIANTS), speed=rng.choice(split.speeds),
            pitch=rng.choice(split.pitches), gap=rng.choice((0, 0, 1, 3)),
            gain_db=rng.uniform(-14.0, 0.0),
            room_s=rng.choice((0.0, 0.0, 0.0, rng.uniform(0.1, 0.35))),
            noise=rng.choice(split.noise), snr_db=rng.uniform(*split.snr_db))


# ----------------------------------------------------------------------------- audio
def _colour(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    white = rng.standard_normal(n)
    if kind == "white":
        return white
    spectrum = np.fft.rfft(white)
    f = np.maximum(np.fft.rfftfreq(n), 1.0 / n)
    spectrum /= np.sqrt(f) if kind == "pink" else f  # 1/f power, or 1/f^2
    return np.fft.irfft(spectrum, n)


def _room(x: np.ndarray, rt60: float, rng: np.random.Generator) -> np.ndarray:
    n = int(rt60 * RATE)
    t = np.arange(n) / RATE
    ir = rng.standard_normal(n) * np.exp(-6.9 * t / rt60)  # -60 dB at rt60
    ir[0] = 1.0 / 0.3  # the direct sound, ahead of the reflections
    wet = np.convolve(x, ir)[: len(x)]
    return wet * (np.abs(x).max() / max(np.abs(wet).max(), 1e-9))


def _voiced(x: np.ndarray) -> tuple[int, int]:
    """First and last sample of espeak-ng's output louder than -40 dB of its peak."""
    loud = np.flatnonzero(np.abs(x) > 0.01 * max(np.abs(x).max(), 1e-9))
    return (int(loud[0]), int(loud[-1]) + 1) if len(loud) else (0, len(x))


def render(u: Utterance, seed: int) -> tuple[np.ndarray, tuple[int, int]]:
    """The utterance as 16 kHz float32 in [-1, 1], and where its speech lies (ms)."""
    from scipy.signal import resample_poly

    with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
        subprocess.run(["espeak-ng", "-v", u.voice, "-s", str(u.speed), "-p", str(u.pitch),
                        "-g", str(u.gap), "-w", tmp.name, u.pinyin], check=True)
        with wave.open(tmp.name) as w:
            rate = w.getframerate()
            x = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16) / 32768.0
    g = math.gcd(RATE, rate)
    x = resample_poly(x, RATE // g, rate // g)
    begin, end = _voiced(x)
    rng = np.random.default_rng(seed)
    if u.room_s:
        x = _room(x, u.room_s, rng)
    lead, tail = (int(rng.uniform(0.1, 0.5) * RATE) for _ in range(2))
    x = np.concatenate([np.zeros(lead), x, np.zeros(tail)])
    bounds = ((lead + begin) * 1000 // RATE, (lead + end) * 1000 // RATE)
    noise = _colour(u.noise, len(x), rng)
    speech_power = np.mean(x[x != 0] ** 2) if np.any(x) else 1e-6
    noise *= math.sqrt(speech_power / np.mean(noise ** 2) / 10 ** (u.snr_db / 10))
    x = (x + noise) * 10 ** (u.gain_db / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32), bounds


def write_wav(path: Path, x: np.ndarray) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes((x * 32767).astype(np.int16).tobytes())


def _make(args: tuple[Utterance, str, int]) -> dict[str, object]:
    u, folder, seed = args
    path = Path(folder) / f"{u.key}.wav"
    x, speech_ms = render(u, seed)
    write_wav(path, x)
    # funasr's jsonl: source_len in 10 ms frames, target as space-separated tokens
    return {"key": u.key, "source": str(path), "source_len": len(x) // 160,
            "target": " ".join(u.text), "target_len": len(u.text),
            "speech_ms": list(speech_ms), "meta": asdict(u)}


def build(split: Split, count: int, folder: Path, prefix: str, jobs: int = 2) -> Path:
    """Renders ``count`` utterances of ``split`` into ``folder``; returns its jsonl."""
    from multiprocessing import Pool

    folder.mkdir(parents=True, exist_ok=True)
    work = [(u, str(folder), split.seed * 1_000_003 + i)
            for i, u in enumerate(utterances(split, count, prefix))]
    listing = folder / f"{prefix}.jsonl"
    with Pool(jobs) as pool, listing.open("w", encoding="utf-8") as out:
        for row in pool.imap(_make, work, chunksize=16):
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    return listing
