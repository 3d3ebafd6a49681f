"""A small variable-length spoken-word dataset, synthesised locally (nothing is downloaded).

With ``espeak-ng`` installed (Debian/Ubuntu: ``apt-get install -y espeak-ng``; macOS:
``brew install espeak-ng``) every clip is one word spoken by a random voice (accent x voice
variant), speaking rate, pitch and loudness, with random leading/trailing silence and background
noise, so durations vary by about 5x. Without it, :func:`synthesise` falls back to a clearly
labelled SYNTHETIC TONE dataset: each class is a fixed pattern of tone glides, played at a random
speed and pitch offset, so lengths still vary. Either way: float32 mono waveforms, integer labels.

:func:`write_dataset` stores a dataset the way real audio arrives: 16-bit wav files plus
``train.csv`` / ``test.csv`` manifests (``path,label``), which the training example then reads
through :class:`elasticast_kernels.data.ManifestDataset`, the same path as any real corpus;
:func:`prepare` does so once per folder and request (a resumed run finds the same clips).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import tempfile
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from elasticast_kernels._optional import import_optional

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5", "croak", "klatt", "klatt2")
SAMPLE_RATE = 16000  # espeak-ng speaks at 22050 Hz; clips are resampled to the recipes' 16 kHz


@dataclass
class SpokenWords:
    """Waveforms (float32 ``[num_samples]`` each, at ``sample_rate``), labels, and what made them."""

    waveforms: list[np.ndarray]
    labels: np.ndarray  # int64 [num_clips]
    class_names: tuple[str, ...]
    sample_rate: int
    source: str  # "espeak-ng" or "synthetic tones"
    description: str


def espeak_binary() -> str | None:
    """Path of ``espeak-ng`` (or ``espeak``), or None when neither is installed."""
    return shutil.which("espeak-ng") or shutil.which("espeak")


def _read_wav(data: bytes) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data)) as handle:
        rate, width, channels = handle.getframerate(), handle.getsampwidth(), handle.getnchannels()
        frames = handle.readframes(handle.getnframes())
    if width != 2:
        raise RuntimeError(f"expected 16-bit PCM from espeak-ng, got {8 * width}-bit")
    pcm = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return pcm.reshape(-1, channels).mean(axis=1), rate


def _resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling by FFT (exact for these short clips; no extra dependency)."""
    if rate_in == rate_out:
        return signal
    n_out = int(round(len(signal) * rate_out / rate_in))
    spectrum = np.fft.rfft(signal)
    keep = min(len(spectrum), n_out // 2 + 1)
    return (np.fft.irfft(spectrum[:keep], n_out) * (n_out / len(signal))).astype(np.float32)


def _speak(binary: str, word: str, voice: str, speed: int, pitch: int, workdir: str, tag: int) -> np.ndarray:
    path = os.path.join(workdir, f"{tag}.wav")
    subprocess.run(
        [binary, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, word],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    with open(path, "rb") as handle:
        signal, rate = _read_wav(handle.read())
    os.remove(path)
    trimmed = np.flatnonzero(np.abs(signal) > 1e-3)  # espeak pads with its own silence; we add our own
    if trimmed.size:
        signal = signal[trimmed[0] : trimmed[-1] + 1]
    return _resample(signal, rate, SAMPLE_RATE)


def _augment(signal: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random gain, leading/trailing silence and background noise at 10-40 dB SNR."""
    signal = signal / (np.abs(signal).max() + 1e-6) * rng.uniform(0.2, 0.9)
    lead, trail = (int(rng.uniform(0.0, 0.25) * SAMPLE_RATE) for _ in range(2))
    signal = np.concatenate([np.zeros(lead, np.float32), signal, np.zeros(trail, np.float32)])
    power = float(np.mean(signal**2)) + 1e-12
    snr_db = rng.uniform(10.0, 40.0)
    noise = rng.standard_normal(signal.shape[0]) * np.sqrt(power / 10 ** (snr_db / 10))
    return (signal + noise).astype(np.float32)


def _espeak_dataset(binary: str, clips_per_word: int, seed: int, progress) -> SpokenWords:
    rng = np.random.default_rng(seed)
    jobs = []
    for label, word in enumerate(WORDS):
        for _ in range(clips_per_word):
            voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{VARIANTS[rng.integers(len(VARIANTS))]}"
            jobs.append((word, label, voice, int(rng.integers(110, 290)), int(rng.integers(20, 80))))
    waveforms: list[np.ndarray] = [None] * len(jobs)  # type: ignore[list-item]
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(max_workers=4) as pool:
        futures = [pool.submit(_speak, binary, word, voice, speed, pitch, workdir, i)
                   for i, (word, _, voice, speed, pitch) in enumerate(jobs)]
        for i, future in enumerate(progress(futures, desc="espeak-ng", unit="clip")):
            waveforms[i] = _augment(future.result(), rng)
    labels = np.array([job[1] for job in jobs], dtype=np.int64)
    return SpokenWords(
        waveforms, labels, WORDS, SAMPLE_RATE, "espeak-ng",
        f"espeak-ng spoken words: {len(WORDS)} words x {clips_per_word} clips, {len(ACCENTS)} accents x "
        f"{len(VARIANTS)} voice variants, 110-290 words/min, pitch 20-80, noise 10-40 dB SNR",
    )


def _tone_dataset(clips_per_word: int, seed: int, progress) -> SpokenWords:
    """SYNTHETIC TONES: class c is a two-note chord (fixed per class) with vibrato and a fade in/out."""
    rng = np.random.default_rng(seed)
    # Notes spread over the mel range so that every class lights up different mel bands.
    notes = np.geomspace(150.0, 5000.0, 2 * len(WORDS))
    chords = [(notes[c], notes[(c + len(WORDS) // 2 + 3) % len(notes)]) for c in range(len(WORDS))]
    waveforms, labels = [], []
    for label in progress(range(len(WORDS)), desc="tones", unit="class"):
        for _ in range(clips_per_word):
            n = int(rng.uniform(0.3, 1.6) * SAMPLE_RATE)  # the "speaking rate": 0.3-1.6 s
            t = np.arange(n) / SAMPLE_RATE
            shift = 2 ** rng.uniform(-1 / 12, 1 / 12)  # +-1 semitone: the "voice"
            vibrato = 1 + 0.01 * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
            chord = sum(np.sin(2 * np.pi * np.cumsum(f * shift * vibrato) / SAMPLE_RATE) for f in chords[label])
            waveforms.append(_augment((chord * np.hanning(n)).astype(np.float32), rng))
            labels.append(label)
    names = tuple(f"chord-{i}" for i in range(len(WORDS)))
    return SpokenWords(
        waveforms, np.array(labels, dtype=np.int64), names, SAMPLE_RATE, "synthetic tones",
        f"SYNTHETIC TONE DATASET (not speech; espeak-ng not used): {len(WORDS)} two-note chords x "
        f"{clips_per_word} clips, 0.3-1.6 s, +-1 semitone, vibrato, noise 10-40 dB SNR",
    )


def synthesise(clips_per_word: int, seed: int = 0, use_espeak: bool = True, progress=None) -> SpokenWords:
    """Make the dataset: espeak-ng words when available (and wanted), else synthetic tones.

    ``progress``: a tqdm-like wrapper ``progress(iterable, desc=..., unit=...)``, or None.
    """
    progress = progress or (lambda iterable, **_: iterable)
    binary = espeak_binary() if use_espeak else None
    if binary is not None:
        return _espeak_dataset(binary, clips_per_word, seed, progress)
    return _tone_dataset(clips_per_word, seed, progress)


def write_dataset(data: SpokenWords, out_dir: str, test_fraction: float = 0.2, seed: int = 0) -> tuple[str, str]:
    """Write ``data`` as ``out_dir/audio/NNNNN.wav`` (16-bit PCM) plus ``train.csv`` and ``test.csv``.

    The split is a seeded permutation; ``dataset.json`` records the source and description.
    Needs ``soundfile`` (the ``audio`` extra). Returns the two manifest paths.
    """
    soundfile = import_optional("soundfile", "writing the demo's wav files")

    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(data.waveforms))
    num_test = int(round(len(order) * test_fraction))
    splits = {"test": order[:num_test], "train": order[num_test:]}
    paths = {}
    for split, ids in splits.items():
        paths[split] = os.path.join(out_dir, f"{split}.csv")
        with open(paths[split], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["path", "label"])
            for clip in ids.tolist():
                name = f"audio/{clip:05d}.wav"
                peak = float(np.abs(data.waveforms[clip]).max())
                wave = data.waveforms[clip] / peak * 0.99 if peak > 0.99 else data.waveforms[clip]  # no clipping
                soundfile.write(os.path.join(out_dir, name), wave, data.sample_rate, subtype="PCM_16")
                writer.writerow([name, data.class_names[int(data.labels[clip])]])
    with open(os.path.join(out_dir, "dataset.json"), "w") as handle:
        json.dump({"source": data.source, "description": data.description, "classes": list(data.class_names),
                   "clips": len(data.waveforms), "test_fraction": test_fraction, "seed": seed}, handle, indent=1)
    return paths["train"], paths["test"]


def prepare(data_dir: str, clips_per_word: int, seed: int, use_espeak: bool, test_fraction: float,
            write: bool = True) -> tuple[str, str, dict]:
    """The demo data in ``data_dir``: ``(train manifest, test manifest, dataset.json contents)``.

    With ``write`` (one process: rank 0), synthesises and writes it unless ``data_dir`` already
    holds the data of the same request (a resumed run then trains on the very same clips).
    Without ``write`` (the other ranks, after a barrier), only reads what is there.
    """
    info_path = os.path.join(data_dir, "dataset.json")
    request = {"clips_per_word": clips_per_word, "seed": seed, "espeak": use_espeak, "test_fraction": test_fraction}
    info = {}
    if os.path.exists(info_path):
        with open(info_path) as handle:
            info = json.load(handle)
    if write and info.get("request") != request:
        data = synthesise(clips_per_word, seed=seed, use_espeak=use_espeak)
        write_dataset(data, data_dir, test_fraction, seed)
        with open(info_path) as handle:
            info = {**json.load(handle), "request": request}
        with open(info_path, "w") as handle:
            json.dump(info, handle, indent=1)
    return os.path.join(data_dir, "train.csv"), os.path.join(data_dir, "test.csv"), info


def add_arguments(parser) -> None:
    """The demo's command-line options (``examples/train.py``)."""
    parser.add_argument("--clips-per-word", type=int, help="demo clips per class (default 120; quick: 16)")
    parser.add_argument("--no-espeak", action="store_true", help="use the synthetic tone dataset even with espeak-ng")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="demo clips held out for evaluation")


def manifests(args, is_main: bool, barrier, say=print) -> tuple[str, str, str]:
    """``(train manifest, test manifest, description)`` of the demo in ``args.data_dir``: written by
    the main process (``is_main``), read by every process after ``barrier()``."""
    request = (args.data_dir, args.clips_per_word, args.seed, not args.no_espeak, args.test_fraction)
    if is_main:
        prepare(*request)
    barrier()  # every rank reads what rank 0 wrote (several machines: a data_dir on shared storage)
    train_csv, test_csv, info = prepare(*request, write=False)
    if info["source"] != "espeak-ng":
        say("NOTE: espeak-ng was not found (or --no-espeak): this run uses the SYNTHETIC TONE DATASET.\n"
            "      Install it for spoken words: apt-get update && apt-get install -y espeak-ng")
    return train_csv, test_csv, info["description"]
