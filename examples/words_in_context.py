"""One spoken keyword inside background speech, at a clip length you choose: data where length is a controlled variable.

Every clip holds exactly one keyword (one of :data:`KEYWORDS`: the label) said by one of a set of
random *speakers* (an espeak-ng voice, speaking rate and pitch), over background speech: another
speaker's stream of filler words (never a keyword), entered at a random point and 20-30 dB quieter
than the keyword, plus noise. :func:`render` makes a clip any number of seconds long by taking more
or less of the background around the keyword, which keeps its place (the same fraction of the
context before it), its loudness and its noise level. So the label is defined at every length, and
rendering the same clip at 1 s and at 8 s changes only how much background speech surrounds the
keyword: the task stays "which keyword was said", and a longer clip is longer the way a recording
made in a room with people talking is, not by padding.

Without espeak-ng, :func:`make_clips` falls back to SYNTHETIC TONES: the keyword is its class's
two-note chord and the background a run of single-note glides (one note never makes a chord), and
the description says so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spoken_words import SAMPLE_RATE, espeak_binary, random_voice, speak_all

#: The classes: ten three- or four-syllable words (0.4-1 s), unlike each other and unlike the filler.
KEYWORDS = ("banana", "elephant", "computer", "umbrella", "tomato", "kangaroo", "helicopter", "dinosaur",
            "volcano", "avocado")
#: The background's vocabulary: everyday two-syllable words sharing no keyword's stressed syllable.
FILLER_WORDS = (
    "apple", "river", "paper", "window", "garden", "music", "table", "happy", "water", "pencil",
    "letter", "summer", "basket", "silver", "candle", "pillow", "rabbit", "kitchen", "blanket", "pepper",
    "finger", "bottle", "ladder", "carpet", "cookie", "tiger", "purple", "helmet", "jacket", "bucket",
    "wallet", "pizza", "zebra", "camel", "tulip", "muffin", "sister", "travel", "simple", "village",
    "dinner", "spider", "baby", "city", "family", "cherry", "puppy", "winter", "butter", "kettle",
)
BACKGROUND_DB = (20.0, 30.0)  # how much quieter the background speech is than the keyword (RMS)
SNR_DB = (20.0, 40.0)  # keyword-to-noise power ratio


@dataclass(frozen=True)
class KeywordClip:
    """The parts of one clip; :func:`render` assembles it at a length.

    Attributes:
        keyword: float32 ``[samples]``, the keyword alone (no silence around it).
        background: float32 ``[samples]``, another speaker's filler speech (shared with other clips).
        background_start: first sample of ``background`` used; it wraps around if a length needs more.
        background_gain: factor on ``background`` relative to the keyword's scale (sets its level).
        label: class index into :data:`KEYWORDS` (or the tone classes).
        position: fraction of the context placed before the keyword, in ``[0, 1]``.
        gaps: samples of background-only pause just before and after the keyword.
        gain: peak of the keyword after scaling.
        snr_db: keyword-to-noise power ratio in dB.
        noise_seed: seed of the clip's noise; a longer rendering extends the same noise.
    """

    keyword: np.ndarray
    background: np.ndarray
    background_start: int
    background_gain: float
    label: int
    position: float
    gaps: tuple[int, int]
    gain: float
    snr_db: float
    noise_seed: int


def render(clip: KeywordClip, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The clip as float32 ``[samples]``, ``seconds`` long, or just long enough to hold the keyword
    and its pauses when that is longer (``seconds=0``: the keyword and its pauses over background).

    Raises:
        ValueError: ``seconds`` negative, NaN or infinite.
    """
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds >= 0):
        raise ValueError(f"seconds must be a finite number >= 0, got {seconds!r}")
    core = np.concatenate([np.zeros(clip.gaps[0], np.float32), clip.keyword, np.zeros(clip.gaps[1], np.float32)])
    total = max(int(round(seconds * sample_rate)), core.size)
    context = total - core.size
    lead = int(round(clip.position * context))
    # the background runs under the whole clip; the keyword is added on top of it
    background = np.take(clip.background, np.arange(clip.background_start, clip.background_start + total), mode="wrap")
    wave = background * clip.background_gain
    wave[lead:lead + core.size] += core
    scale = clip.gain / (float(np.abs(clip.keyword).max()) + 1e-9)
    keyword_power = float(np.mean((clip.keyword * scale) ** 2)) + 1e-12
    noise = np.random.default_rng(clip.noise_seed).standard_normal(total)
    return (wave * scale + noise * math.sqrt(keyword_power / 10 ** (clip.snr_db / 10))).astype(np.float32)


def _rms(signal: np.ndarray) -> float:
    return float(np.sqrt(np.mean(signal.astype(np.float64) ** 2))) + 1e-9


def _finish(keyword: np.ndarray, background: np.ndarray, label: int, rng: np.random.Generator,
            background_db: tuple[float, float]) -> KeywordClip:
    """Draw the clip's background entry point and level, position, pauses, gain, SNR and noise seed."""
    level = _rms(keyword) / _rms(background) * 10 ** (-rng.uniform(*background_db) / 20)
    gaps = tuple(int(rng.uniform(0.03, 0.15) * SAMPLE_RATE) for _ in range(2))
    return KeywordClip(keyword.astype(np.float32), background, int(rng.integers(background.size)), float(level),
                       int(label), float(rng.uniform()), gaps, float(rng.uniform(0.2, 0.9)),
                       float(rng.uniform(*SNR_DB)), int(rng.integers(2**31)))


def _espeak_clips(binary: str, labels: np.ndarray, speakers: np.ndarray, background_seconds: float, rng,
                  progress, background_db: tuple[float, float]) -> list[KeywordClip]:
    voices = [random_voice(rng) for _ in range(speakers.max() + 1)]
    # about one two-syllable word per beat at the speaker's rate, plus two
    texts = [" ".join(rng.choice(FILLER_WORDS, math.ceil(background_seconds * speed / 60) + 2))
             for _, speed, _ in voices]
    jobs = [(text, *voice) for text, voice in zip(texts, voices)]
    jobs += [(KEYWORDS[label], *voices[speaker]) for label, speaker in zip(labels, speakers)]
    spoken = speak_all(binary, jobs, progress)
    streams = [stream.astype(np.float32) for stream in spoken[: len(voices)]]
    # the background is the next speaker's speech (the speaker's own when there is only one)
    return [_finish(keyword, streams[(speaker + 1) % len(streams)], label, rng, background_db)
            for keyword, label, speaker in zip(spoken[len(voices):], labels, speakers)]


def _glide(frequencies: list[float], seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Sum of sines at ``frequencies`` with a slight shared vibrato, under a Hann envelope."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    vibrato = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
    tone = sum(np.sin(2 * np.pi * np.cumsum(f * vibrato) / SAMPLE_RATE) for f in frequencies)
    return (tone * np.hanning(t.size)).astype(np.float32)


def _tone_clips(labels: np.ndarray, speakers: np.ndarray, background_seconds: float, rng,
                progress, background_db: tuple[float, float]) -> list[KeywordClip]:
    notes = np.geomspace(150.0, 5000.0, 2 * len(KEYWORDS))
    shifts = 2 ** rng.uniform(-1 / 12, 1 / 12, speakers.max() + 1)  # a "speaker": +-1 semitone
    streams = []
    for _ in shifts:
        pieces = [_glide([rng.uniform(150.0, 5000.0)], rng.uniform(0.15, 0.5), rng)]
        while sum(piece.size for piece in pieces) < max(background_seconds, 0.5) * SAMPLE_RATE:
            pieces.append(_glide([rng.uniform(150.0, 5000.0)], rng.uniform(0.15, 0.5), rng))
        streams.append(np.concatenate(pieces))
    clips = []
    for label, speaker in progress(list(zip(labels, speakers)), desc="tones", unit="clip"):
        chord = [notes[label] * shifts[speaker], notes[(label + len(KEYWORDS) // 2 + 3) % notes.size] * shifts[speaker]]
        clips.append(_finish(_glide(chord, rng.uniform(0.4, 0.9), rng), streams[(speaker + 1) % len(streams)],
                             label, rng, background_db))
    return clips


def make_clips(clips_per_word: int, speakers: int, seed: int, background_seconds: float, use_espeak: bool = True,
               progress=None, background_db: tuple[float, float] = BACKGROUND_DB) -> tuple[list[KeywordClip], str, str]:
    """``clips_per_word`` clips of every keyword, in a seeded random order, said by ``speakers``
    random speakers in turn, each speaker also speaking about ``background_seconds`` of filler.

    ``background_db``: the range (dB, uniform per clip) by which the background speech is quieter
    than the keyword.

    Two calls with different seeds draw different speakers (held-out speakers for evaluation:
    espeak-ng has 105 voices here, so rate and pitch are what keeps two speakers apart).

    Returns:
        ``(clips, source, description)``; ``source`` is ``"espeak-ng"`` or ``"synthetic tones"``
        (espeak-ng missing, or ``use_espeak=False``), and the description says which.

    Raises:
        ValueError: ``clips_per_word`` or ``speakers`` not an int >= 1, ``background_seconds``
            not a finite number >= 0, ``background_db`` not two finite numbers LOW <= HIGH.
    """
    for name, value in (("clips_per_word", clips_per_word), ("speakers", speakers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if not (isinstance(background_seconds, (int, float)) and math.isfinite(background_seconds)
            and background_seconds >= 0):
        raise ValueError(f"background_seconds must be a finite number >= 0, got {background_seconds!r}")
    if not (len(background_db) == 2 and all(isinstance(v, (int, float)) and math.isfinite(v) for v in background_db)
            and background_db[0] <= background_db[1]):
        raise ValueError(f"background_db must be two finite numbers LOW <= HIGH, got {background_db!r}")
    progress = progress or (lambda iterable, **_: iterable)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(KEYWORDS)), clips_per_word))
    speaker_of = np.arange(labels.size) % min(speakers, labels.size)
    levels = (f"background {background_db[0]:g}-{background_db[1]:g} dB below the keyword, noise "
              f"{SNR_DB[0]:g}-{SNR_DB[1]:g} dB SNR")
    binary = espeak_binary() if use_espeak else None
    if binary is not None:
        clips = _espeak_clips(binary, labels, speaker_of, background_seconds, rng, progress, background_db)
        return clips, "espeak-ng", (
            f"espeak-ng: {len(KEYWORDS)} keywords x {clips_per_word} clips by {speaker_of.max() + 1} random speakers "
            f"(voice of 105, 110-290 words/min, pitch 20-80), each keyword over another speaker's filler speech "
            f"({len(FILLER_WORDS)} filler words), {levels}")
    clips = _tone_clips(labels, speaker_of, background_seconds, rng, progress, background_db)
    return clips, "synthetic tones", (
        f"SYNTHETIC TONE DATASET (not speech; espeak-ng not used): {len(KEYWORDS)} two-note chords x "
        f"{clips_per_word} clips by {speaker_of.max() + 1} 'speakers' (+-1 semitone), each chord over single-note "
        f"glides, {levels}")
