"""Shared by the inference and elasticast-predict tests: tiny saved models, audio files made at
test time (espeak-ng speech where it is installed, tones otherwise), and the reference scores
(the model called directly on the card's features)."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import torch

from elasticast_kernels.data.features import audio_to_spectrogram
from elasticast_kernels.models import ElasticAST
from elasticast_kernels.saved_model import FeatureSettings, ModelCard, save_model

RATE = 16000
MEL = 32
PATCH = 16
TABLE_FRAMES = 64  # time positional table: 4 patches = 0.64 s at 10 ms frames: the default window
CLASSES = ("dog", "cat", "bird")
FEATURES = FeatureSettings(sample_rate=RATE, num_mel_bins=MEL, normalize=(-3.0, 4.0))


def tiny_model(num_classes: int = len(CLASSES), **options) -> ElasticAST:
    """A small random ElasticAST whose softmax scale is not the default (a wrong scale would show)."""
    torch.manual_seed(0)
    config = dict(sample_size=(MEL, TABLE_FRAMES), patch_size=PATCH, num_classes=num_classes, dim=16, depth=1,
                  heads=2, channels=1, softmax_scale=0.35, attention_backend="torch")
    model = ElasticAST(**{**config, **options})
    with torch.no_grad():  # std-1 tables and queries give confident, input-dependent scores
        for parameter in model.parameters():
            parameter.normal_(0, 0.5)
    return model.eval()


def saved_model(path, classes=CLASSES, multi_label: bool = False, features: FeatureSettings = FEATURES,
                **options) -> tuple[ElasticAST, ModelCard]:
    model = tiny_model(len(classes), **options)
    card = save_model(path, model, classes=classes, features=features, multi_label=multi_label)
    return model, card


def tone(seconds: float, rate: int = RATE, channels: int = 1, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """``[samples, channels]`` float32: a tone gliding up an octave, plus a little noise."""
    t = np.arange(max(1, int(round(seconds * rate)))) / rate
    phase = 2 * np.pi * freq * (t + t**2 / (2 * max(seconds, 1e-3)))
    noise = np.random.default_rng(seed).standard_normal(t.shape[0]) * 0.01
    wave = 0.3 * np.sin(phase) + noise
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1).astype(np.float32)


def write_audio(path, seconds: float, rate: int = RATE, channels: int = 1, subtype: str | None = None,
                freq: float = 440.0) -> str:
    import soundfile

    soundfile.write(path, tone(seconds, rate, channels, freq), rate, subtype=subtype)
    return os.fspath(path)


def write_speech(path, words: str, rate: int = RATE) -> str:
    """Spoken ``words`` (espeak-ng) when it is installed, else a 1.5 s tone; at ``rate`` Hz."""
    import soundfile

    binary = shutil.which("espeak-ng")
    if binary is None:
        return write_audio(path, 1.5, rate)
    raw = os.fspath(path) + ".espeak.wav"
    subprocess.run([binary, "-w", raw, words], check=True, capture_output=True)
    audio, raw_rate = soundfile.read(raw, dtype="float32")
    os.remove(raw)
    if raw_rate != rate:
        import soxr

        audio = soxr.resample(audio, raw_rate, rate)
    soundfile.write(path, audio, rate)
    return os.fspath(path)


def reference_outputs(model: ElasticAST, card: ModelCard, waveform: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, embedding)`` of one 16 kHz mono waveform, computed directly: the card's features,
    ``model.embed`` / ``model.head`` on a batch of one, softmax (sigmoid when multi-label)."""
    features = card.features
    spec = audio_to_spectrogram(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)), features.sample_rate,
                                features.quality, num_mel_bins=features.num_mel_bins, patch_size=model.patch_size,
                                normalize=features.normalize, **features.fbank_options())
    with torch.no_grad():
        embedding = model.embed([spec], group_max_seq_len=1 << 20)
        logits = model.head(embedding)
    scores = torch.sigmoid(logits) if card.multi_label else torch.softmax(logits, dim=-1)
    return scores[0].numpy(), embedding[0].numpy()
