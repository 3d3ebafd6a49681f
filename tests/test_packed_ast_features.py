"""ASTFeatures: ASTFeatureExtractor's features without its padding.

References: the installed ``ASTFeatureExtractor`` (its torchaudio path when torchaudio imports,
else its numpy path), the stored torchaudio fbank outputs of test_data_features, and the end to
end logits of an HF AST on the extractor's output.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from test_data_features import REFERENCE_FILE, make_waveform

from elasticast_kernels.data import fbank
from elasticast_kernels.models.ast_features import AUDIOSET_MEAN, AUDIOSET_STD, ASTFeatures
from elasticast_kernels.packing import pack_spectrograms
from elasticast_kernels.saved_model import FeatureSettings, load_model, save_model


def chirp(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    rng = np.random.default_rng(seed)
    return (0.4 * np.sin(2 * np.pi * (200 + 1500 * t) * t) + 0.05 * rng.standard_normal(n) + 0.1).astype(np.float32)


def extractor_tolerance() -> float:
    """The extractor's numpy path computes in float64 like ASTFeatures; torchaudio's in float32
    (with float32 mel filters: ~1e-3 on log energies, /9.1 after normalisation)."""
    from transformers.utils import is_speech_available

    return 5e-4 if is_speech_available() else 1e-5


# 0.02 s: fewer samples than one window (0 frames); below 240 samples the numpy path raises
@pytest.mark.parametrize("seconds", [0.02, 0.5, 3.3, 10.0, 10.255, 12.0])
def test_equals_the_extractor_where_its_frames_are_real(seconds):
    transformers = pytest.importorskip("transformers")
    extractor = transformers.ASTFeatureExtractor()
    wave = chirp(seconds)
    padded = extractor(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
    ours = ASTFeatures.from_extractor(extractor)
    (clip,) = ours(wave, sampling_rate=16000)
    frames = ours.num_frames(len(wave))
    assert clip.shape == (frames, 128) and clip.dtype == torch.float32
    real = min(frames, extractor.max_length)
    np.testing.assert_allclose(clip[:real].numpy(), padded[:real], rtol=0, atol=extractor_tolerance())
    np.testing.assert_allclose(padded[real:], ours.pad_value, rtol=0, atol=1e-6)  # the extractor's padding
    (cut,) = ours(wave, max_frames="extractor")
    assert cut.shape[0] == real


def test_non_default_extractor_settings():
    transformers = pytest.importorskip("transformers")
    extractor = transformers.ASTFeatureExtractor(num_mel_bins=64, mean=-2.0, std=3.0, max_length=300)
    waves = [chirp(1.0, seed=1), chirp(2.5, seed=2)]
    padded = extractor(waves, sampling_rate=16000, return_tensors="np")["input_values"]
    ours = ASTFeatures.from_extractor(extractor)
    for clip, row in zip(ours(waves), padded):
        real = min(clip.shape[0], 300)
        np.testing.assert_allclose(clip[:real].numpy(), row[:real], rtol=0, atol=extractor_tolerance())
    unnormalised = transformers.ASTFeatureExtractor(do_normalize=False)
    wave = chirp(0.7)
    (clip,) = ASTFeatures.from_extractor(unnormalised)(wave)
    row = unnormalised(wave, sampling_rate=16000, return_tensors="np")["input_values"][0]
    np.testing.assert_allclose(clip.numpy(), row[: clip.shape[0]], rtol=0, atol=10 * extractor_tolerance())


def test_equals_stored_torchaudio_fbank():
    """The extractor's torchaudio path on the stored case (16 kHz, 128 mel bins: AST's options)."""
    stored = np.load(REFERENCE_FILE)
    wave = make_waveform(0, 16000, 7000)
    (clip,) = ASTFeatures(do_normalize=False)(wave.astype(np.float32))
    np.testing.assert_allclose(clip.numpy(), stored["fbank_0_f32"], rtol=0, atol=2e-3)
    (normalised,) = ASTFeatures()(wave.astype(np.float32))
    expected = (stored["fbank_0_f32"] - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
    np.testing.assert_allclose(normalised.numpy(), expected, rtol=0, atol=2e-3 / (2 * AUDIOSET_STD))


def random_hf(transformers):
    """A one-layer HF AST (96 frames, 32 mel bins, 3 labels) with weights large enough to matter."""
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                    max_length=96, num_mel_bins=32, num_labels=3)
    hf = transformers.ASTForAudioClassification(config).eval()
    with torch.no_grad():
        for parameter in hf.parameters():
            parameter.normal_(0.0, 0.3)
    return hf


def test_end_to_end_logits_equal_hf_on_a_clip_of_exactly_max_length():
    """A waveform of exactly ``max_length`` frames: extractor + HF AST == ASTFeatures + PackedAST."""
    transformers = pytest.importorskip("transformers")
    from elasticast_kernels.models import PackedAST

    hf = random_hf(transformers)
    extractor = transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=96)
    wave = chirp((400 + 95 * 160) / 16000)
    inputs = extractor(wave, sampling_rate=16000, return_tensors="pt")["input_values"]
    features = ASTFeatures.from_extractor(extractor)(wave)
    assert features[0].shape == (96, 32)
    packed = PackedAST.from_hf(hf, features=extractor, attention_backend="torch")
    with torch.no_grad():
        torch.testing.assert_close(packed(features), hf(inputs).logits, rtol=0, atol=1e-4)


def test_preprocessor_config_and_settings_round_trip(tmp_path):
    (tmp_path / "preprocessor_config.json").write_text(
        '{"feature_extractor_type": "ASTFeatureExtractor", "num_mel_bins": 64, "mean": -1.5, "std": 2.5, '
        '"sampling_rate": 16000, "max_length": 512, "padding_value": 7.0}')
    features = ASTFeatures.from_pretrained(tmp_path)
    assert features == ASTFeatures(num_mel_bins=64, mean=-1.5, std=2.5, max_length=512)
    assert features.pad_value == pytest.approx(1.5 / 5.0)  # the extractor pads with 0 whatever padding_value says
    settings = features.settings()
    assert settings.normalize == (-1.5, 5.0) and settings.num_mel_bins == 64
    assert ASTFeatures.from_settings(settings, max_length=512) == features
    plain = ASTFeatures(do_normalize=False)
    assert plain.settings().normalize is None and ASTFeatures.from_settings(plain.settings()) == plain
    assert plain.pad_value == 0.0


def card_features(settings: FeatureSettings, wave: np.ndarray) -> torch.Tensor:
    """``[frames, mel]`` of a waveform with a saved card's settings: what a predictor computes."""
    return fbank(torch.from_numpy(wave).double(), settings.sample_rate, settings.num_mel_bins, quality=settings.quality,
                 normalize=settings.normalize, **settings.fbank_options()).float()


def test_features_match_data_fbank_with_the_card_settings():
    """What a predictor computes from a saved card (data.fbank with FeatureSettings) is these features."""
    features = ASTFeatures()
    settings = features.settings()
    wave = chirp(2.0)
    torch.testing.assert_close(features(wave)[0], card_features(settings, wave), rtol=0, atol=1e-6)


def test_saved_packed_ast_scores_audio_as_the_extractor_and_hf(tmp_path):
    """The route from a saved PackedAST file to logits, with only its card: ``ASTFeatures.from_settings
    (card.features)`` (data.fbank, and 0 frames for a clip shorter than one window, where fbank
    itself raises) -> ``[frames, mel]`` per clip -> the model (a list, or a PackedBatch packed
    with the model's patch and stride, tokens counted by ``model.num_tokens``). Equal to extractor
    + HF AST at max_length frames and, for a shorter clip, to an HF AST of that max_length."""
    transformers = pytest.importorskip("transformers")
    from test_packed_ast import hf_for_length

    from elasticast_kernels.models import PackedAST

    hf = random_hf(transformers)
    extractor = transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=96, mean=-3.0, std=2.5)
    packed = PackedAST.from_hf(hf, features=extractor, attention_backend="torch")
    save_model(tmp_path / "ast.pt", packed, classes=["a", "b", "c"],
               features=ASTFeatures.from_extractor(extractor).settings())
    model, card = load_model(tmp_path / "ast.pt", attention_backend="torch")
    waves = [chirp((400 + 95 * 160) / 16000), chirp(0.4, seed=1), chirp(0.01, seed=2), chirp(2.0, seed=3)]
    clips = ASTFeatures.from_settings(card.features, max_length=model.config["max_length"])(waves)
    assert [clip.shape[0] for clip in clips] == [96, 38, 0, 198]
    for wave, clip in zip(waves, clips):
        if clip.shape[0]:
            torch.testing.assert_close(clip, card_features(card.features, wave), rtol=0, atol=1e-6)
    batch = pack_spectrograms([model.to_spectrogram(clip) for clip in clips], model.patch_size, stride=model.stride)
    assert list(batch.seqlens) == [model.num_tokens(clip.shape[0]) for clip in clips] == [18, 6, 2, 38]
    with torch.no_grad():
        logits = model(clips)
        torch.testing.assert_close(model(batch), logits, rtol=0, atol=1e-6)
        full = extractor(waves[0], sampling_rate=16000, return_tensors="pt")["input_values"]
        torch.testing.assert_close(logits[0], hf(full).logits[0], rtol=0, atol=1e-4)
        short = transformers.ASTFeatureExtractor(num_mel_bins=32, max_length=38, mean=-3.0, std=2.5)
        inputs = short(waves[1], sampling_rate=16000, return_tensors="pt")["input_values"]
        torch.testing.assert_close(logits[1], hf_for_length(hf, 38)(inputs).logits[0], rtol=0, atol=1e-4)


def test_batches_devices_and_lengths():
    features = ASTFeatures(num_mel_bins=32)
    waves = [chirp(0.3, seed=1), chirp(0.02, seed=2), chirp(1.1, seed=3)]
    clips = features(waves)
    assert [c.shape[0] for c in clips] == [features.num_frames(len(w)) for w in waves] == [28, 0, 108]
    stacked = features(np.stack([waves[0], waves[0]]))
    assert len(stacked) == 2 and torch.equal(stacked[0], clips[0])
    assert torch.equal(features(torch.from_numpy(waves[0]))[0], clips[0])
    assert torch.equal(features(waves[0].tolist())[0], clips[0])
    assert features(waves[0], dtype=torch.float64)[0].dtype == torch.float64
    assert features(waves[2], max_frames=10)[0].shape == (10, 32)


def test_hostile_inputs(tmp_path):
    features = ASTFeatures()
    with pytest.raises(ValueError, match="sampling_rate=44100, but these features are for 16000 Hz"):
        features(chirp(0.5), sampling_rate=44100)
    with pytest.raises(ValueError, match="clip 1 must be a 1-D mono waveform"):
        features([chirp(0.5), np.zeros((2, 800), dtype=np.float32)])
    with pytest.raises(ValueError, match="one mono clip or a batch"):
        features(np.zeros((2, 2, 800)))
    bad = chirp(0.5)
    bad[100] = np.nan
    with pytest.raises(ValueError, match="clip 0 holds NaN or infinite samples"):
        features(bad)
    with pytest.raises(ValueError, match="max_frames"):
        features(chirp(0.5), max_frames=0)
    with pytest.raises(ValueError, match="empty"):
        features([])
    with pytest.raises(TypeError, match="numpy array, a torch tensor or a list"):
        features("audio.wav")
    with pytest.raises(TypeError, match="clip 0 must be numbers"):
        features([["a", "b"]])
    with pytest.raises(ValueError, match="ASTFeatures.std must be > 0"):
        ASTFeatures(std=0.0)
    with pytest.raises(ValueError, match="ASTFeatures.mean must be finite, got inf"):
        ASTFeatures(mean=float("inf"))
    with pytest.raises(TypeError, match="ASTFeatures.num_mel_bins must be an int, got float"):
        ASTFeatures(num_mel_bins=2.5)
    with pytest.raises(ValueError, match="is for a WhisperFeatureExtractor"):
        ASTFeatures.from_dict({"feature_extractor_type": "WhisperFeatureExtractor"})
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json"):
        ASTFeatures.from_pretrained(tmp_path)
    (tmp_path / "preprocessor_config.json").write_text("{\n  nope")
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        ASTFeatures.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="differ from ASTFeatureExtractor's fbank options"):
        ASTFeatures.from_settings(FeatureSettings(quality=2.0))
    with pytest.raises(TypeError, match="lacks"):
        ASTFeatures.from_extractor(object())
