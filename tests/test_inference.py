"""The inference API: saved model + audio -> the same scores as the model called directly, for any
input format, length and packing; every unusable input named; streaming in input order."""
from __future__ import annotations

import numpy as np
import pytest
import torch

soundfile = pytest.importorskip("soundfile")
pytestmark = pytest.mark.usefixtures("torch_cpu_path")  # the model's torch CPU path, not the Triton interpreter

from elasticast_kernels.data.audio import AudioError, read_audio  # noqa: E402
from elasticast_kernels.data.features import audio_to_spectrogram  # noqa: E402
from elasticast_kernels.inference import Predictor, Waveform, predict, resolve_device, top_k  # noqa: E402
from elasticast_kernels.inference import spectrograms  # noqa: E402
from elasticast_kernels.inference.spectrograms import spectrogram, window_bounds  # noqa: E402
from elasticast_kernels.saved_model import FeatureSettings, model_card  # noqa: E402
from elasticast_kernels.serialization import atomic_save  # noqa: E402

from inference_support import (  # noqa: E402
    CLASSES, FEATURES, RATE, reference_outputs, saved_model, tiny_model, tone, write_audio, write_speech,
)

ATOL = 2e-5


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.pt"
    model, card = saved_model(path)
    return path, model, card


def test_save_then_predict_gives_the_models_own_scores_with_the_files_scale_and_names(tmp_path, model_file):
    path, model, card = model_file
    clips = [write_speech(tmp_path / "speech.wav", "yes"), write_audio(tmp_path / "short.wav", 0.3),
             write_audio(tmp_path / "mid.wav", 2.2, freq=900)]
    predictor = Predictor.from_file(path, device="cpu", long="whole", max_tokens=64)
    assert predictor.model.softmax_scale == 0.35 and predictor.classes == CLASSES
    results = predictor.predict_all(clips, embeddings=True)
    assert [r.source for r in results] == clips
    for clip, result in zip(clips, results):
        scores, embedding = reference_outputs(model, card, read_audio(clip, RATE))
        np.testing.assert_allclose(result.scores, scores, atol=ATOL, err_msg=clip)
        np.testing.assert_allclose(result.embedding, embedding, atol=ATOL, err_msg=clip)
        assert result.windows is None and result.ok
        assert result.duration_s == pytest.approx(soundfile.info(clip).duration)
        assert result.top(1)[0] == (CLASSES[int(np.argmax(scores))], pytest.approx(float(scores.max()), abs=ATOL))
    # the scale matters: the same weights with the published scale 1.0 score differently
    other = tiny_model(softmax_scale=1.0)
    assert not np.allclose(reference_outputs(other, card, read_audio(clips[2], RATE))[0], results[2].scores, atol=1e-3)


def test_a_training_checkpoint_with_a_card_predicts_like_the_export(tmp_path, model_file):
    path, model, card = model_file
    checkpoint = tmp_path / "last.pt"
    atomic_save(checkpoint, {"model_card": card.to_dict(), "model": model.state_dict(), "step": 7})
    clip = write_audio(tmp_path / "a.wav", 1.0)
    export, trained = predict(path, [clip], device="cpu"), predict(checkpoint, [clip], device="cpu")
    np.testing.assert_array_equal(export[0].scores, trained[0].scores)


def test_window_mode_scores_are_the_mean_of_the_windows_each_scored_as_a_clip(tmp_path, model_file):
    path, model, card = model_file
    clip = write_audio(tmp_path / "long.wav", 3.05, freq=300)
    predictor = Predictor.from_file(path, device="cpu", window_s=1.0, hop_s=0.4, max_tokens=40)
    (result,) = predictor.predict_all([clip], embeddings=True)
    wave = read_audio(clip, RATE)
    bounds = window_bounds(wave.shape[0], RATE, int(0.4 * RATE))
    assert [(w.start_s, w.end_s) for w in result.windows] == [(a / RATE, b / RATE) for a, b in bounds]
    assert result.windows[-1].end_s == pytest.approx(3.05) and len(result.windows) == 7
    expected = [reference_outputs(model, card, wave[a:b]) for a, b in bounds]
    for window, (scores, _) in zip(result.windows, expected):
        np.testing.assert_allclose(window.scores, scores, atol=ATOL)
    np.testing.assert_allclose(result.scores, np.mean([s for s, _ in expected], axis=0), atol=ATOL)
    np.testing.assert_allclose(result.embedding, np.mean([e for _, e in expected], axis=0), atol=ATOL)


def test_default_window_is_the_time_table_and_a_short_file_is_one_window_equal_to_whole(tmp_path, model_file):
    path, _, _ = model_file
    predictor = Predictor.from_file(path, device="cpu")
    assert predictor.long == "window" and predictor.window_s == pytest.approx(0.64) and predictor.hop_s == pytest.approx(0.32)
    clip = write_audio(tmp_path / "short.wav", 0.5)
    (windowed,) = predictor.predict_all([clip])
    (whole,) = Predictor.from_file(path, device="cpu", long="whole").predict_all([clip])
    assert len(windowed.windows) == 1 and (windowed.windows[0].start_s, windowed.windows[0].end_s) == (0.0, 0.5)
    np.testing.assert_array_equal(windowed.scores, whole.scores)


@pytest.mark.parametrize("rate, channels, name, subtype", [(48000, 2, "stereo48k.wav", None), (8000, 1, "narrow.wav", None),
                                                           (22050, 3, "three.flac", None), (44100, 1, "float.wav", "FLOAT")])
def test_any_rate_channel_count_and_format_equals_its_decoded_samples(tmp_path, model_file, rate, channels, name, subtype):
    path, model, card = model_file
    clip = write_audio(tmp_path / name, 1.3, rate=rate, channels=channels, subtype=subtype)
    audio, file_rate = soundfile.read(clip, dtype="float32", always_2d=True)
    predictor = Predictor.from_file(path, device="cpu", long="whole")
    from_file, from_samples, from_tensor = predictor.predict_all(
        [clip, (audio.T, file_rate), Waveform(torch.from_numpy(audio.T.copy()), file_rate, name="t")])
    scores, _ = reference_outputs(model, card, read_audio(clip, RATE))
    np.testing.assert_allclose(from_file.scores, scores, atol=ATOL)
    np.testing.assert_allclose(from_samples.scores, from_file.scores, atol=ATOL)
    np.testing.assert_allclose(from_tensor.scores, from_file.scores, atol=ATOL)
    assert from_samples.source == "<waveform 1>" and from_tensor.source == "t"
    assert from_file.duration_s == pytest.approx(1.3, abs=1e-3) == from_samples.duration_s


def test_a_clip_of_50_ms_is_one_padded_patch_column(tmp_path, model_file):
    path, model, card = model_file
    clip = write_audio(tmp_path / "blip.wav", 0.05)
    for long in ("whole", "window"):
        (result,) = Predictor.from_file(path, device="cpu", long=long).predict_all([clip])
        assert result.duration_s == pytest.approx(0.05)
        np.testing.assert_allclose(result.scores, reference_outputs(model, card, read_audio(clip, RATE))[0], atol=ATOL)


def test_a_clip_longer_than_the_pack_budget_gets_a_forward_of_its_own(tmp_path, model_file):
    path, model, card = model_file
    clips = [write_audio(tmp_path / "a.wav", 0.4), write_audio(tmp_path / "long.wav", 12.0, freq=250),
             write_audio(tmp_path / "b.wav", 0.7)]
    predictor = Predictor.from_file(path, device="cpu", long="whole", max_tokens=16)  # 8 patch columns
    forwards, embed = [], predictor.model.embed

    def counting_embed(rows, **options):
        forwards.append([spec.shape[2] // 16 * 2 for spec in rows[0]])  # tokens of each sample
        return embed(rows, **options)

    predictor.model.embed = counting_embed
    results = predictor.predict_all(clips)
    long_tokens = 2 * (spectrogram(torch.from_numpy(read_audio(clips[1], RATE)), FEATURES, 16).shape[2] // 16)
    assert [long_tokens] in forwards and long_tokens > 16
    assert all(sum(pack) <= 16 for pack in forwards if pack != [long_tokens])
    for clip, result in zip(clips, results):
        np.testing.assert_allclose(result.scores, reference_outputs(model, card, read_audio(clip, RATE))[0], atol=ATOL)


def test_unusable_files_are_named_with_the_reason_and_the_others_scored_in_order(tmp_path, model_file):
    path, _, _ = model_file
    good = write_audio(tmp_path / "good.wav", 0.8)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros((0, 1), np.float32), RATE)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)))
    nan = tmp_path / "nan.wav"
    audio = tone(0.5)
    audio[4000] = np.nan
    soundfile.write(nan, audio, RATE, subtype="FLOAT")
    inputs = [good, str(tmp_path / "missing.wav"), str(empty), str(corrupt), str(nan), good,
              (np.array([0.1, np.inf], np.float32), RATE), (np.zeros((RATE, 2), np.float32), RATE),
              (np.zeros(10, np.int16), RATE), (np.zeros(0, np.float32), RATE)]
    predictor = Predictor.from_file(path, device="cpu")
    results = predictor.predict_all(inputs, on_error="return")
    assert [r.ok for r in results] == [True, False, False, False, False, True, False, False, False, False]
    reasons = [r.error for r in results]
    assert "not found" in reasons[1] and "empty" in reasons[2] and "unreadable" in reasons[3]
    assert "NaN" in reasons[4] and "NaN" in reasons[6] and "[samples, channels]" in reasons[7]
    assert "floating point" in reasons[8] and "empty" in reasons[9]
    np.testing.assert_array_equal(results[0].scores, results[5].scores)
    with pytest.raises(ValueError, match="has no scores"):
        results[1].top()
    with pytest.raises(AudioError, match="nan.wav: holds NaN"):
        predictor.predict_all([good, str(nan)])
    with pytest.raises(TypeError, match="input 1 must be a path"):
        predictor.predict_all([good, 3.5])


class _RefusesLong(torch.nn.Module):
    """Wraps a model whose embed refuses inputs of more than 4 time patches, as a model without a
    rule for its time table does."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.head, self.patch_size, self.pos_embed_time = model, model.head, model.patch_size, model.pos_embed_time

    def embed(self, rows, **options):
        for index, spec in enumerate(rows[0]):
            if spec.shape[2] > 4 * self.patch_size:
                raise ValueError(f"sample {index} is longer than the time positional table")
        return self.inner.embed(rows, **options)


def test_an_input_the_model_refuses_fails_alone_and_its_pack_mates_are_scored(tmp_path):
    model = tiny_model()
    card = model_card(model, classes=CLASSES, features=FEATURES)
    clips = [write_audio(tmp_path / "a.wav", 0.5), write_audio(tmp_path / "long.wav", 2.0), write_audio(tmp_path / "b.wav", 0.6)]
    predictor = Predictor(_RefusesLong(model), card, device="cpu", long="whole")
    results = predictor.predict_all(clips, on_error="return")
    assert [r.ok for r in results] == [True, False, True]
    assert "model refused it" in results[1].error and "--long window" in results[1].error
    np.testing.assert_allclose(results[2].scores, reference_outputs(model, card, read_audio(clips[2], RATE))[0], atol=ATOL)
    with pytest.raises(ValueError, match="long.wav: the model refused it"):
        predictor.predict_all(clips)
    windowed = Predictor(_RefusesLong(model), card, device="cpu", long="window").predict_all(clips)
    assert all(r.ok for r in windowed)


def test_multi_label_models_give_sigmoid_scores(tmp_path):
    path = tmp_path / "tags.pt"
    model, card = saved_model(path, classes=("speech", "music", "noise", "dog"), multi_label=True)
    clip = write_audio(tmp_path / "a.wav", 1.0)
    (result,) = predict(path, [clip], device="cpu", long="whole")
    logits = model.head(model.embed([audio_to_spectrogram(torch.from_numpy(read_audio(clip, RATE)), RATE,
                                                          num_mel_bins=32, normalize=FEATURES.normalize)]))
    np.testing.assert_allclose(result.scores, torch.sigmoid(logits)[0].detach().numpy(), atol=ATOL)
    assert result.scores.sum() != pytest.approx(1.0, abs=1e-3)


def test_top_k_orders_by_score_and_checks_k():
    scores = np.array([0.1, 0.5, 0.2, 0.2], np.float32)
    names = ("a", "b", "c", "d")
    assert top_k(scores, names, 3) == [("b", 0.5), ("c", pytest.approx(0.2)), ("d", pytest.approx(0.2))]
    assert [label for label, _ in top_k(scores, names, 10)] == ["b", "c", "d", "a"]
    for bad, error in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)):
        with pytest.raises(error, match="k must be"):
            top_k(scores, names, bad)


def test_predictions_stream_in_input_order_without_reading_all_inputs_first(tmp_path, model_file):
    path, _, _ = model_file
    clip = write_audio(tmp_path / "a.wav", 0.5)
    consumed = []

    def inputs():
        for index in range(40):
            consumed.append(index)
            yield (read_audio(clip, RATE) * (1 + index / 40), RATE)

    predictor = Predictor.from_file(path, device="cpu", max_tokens=32)
    stream = predictor.predict(inputs())
    first = next(stream)
    assert first.source == "<waveform 0>" and len(consumed) < 40
    rest = list(stream)
    assert [r.source for r in rest] == [f"<waveform {i}>" for i in range(1, 40)]


def test_what_is_held_at_once_follows_the_token_budget_not_the_number_of_files(tmp_path, model_file):
    path, _, _ = model_file
    wave = read_audio(write_audio(tmp_path / "a.wav", 3.0), RATE)
    predictor = Predictor.from_file(path, device="cpu", max_tokens=24, window_s=0.5, hop_s=0.25)
    held, run = [], predictor._run
    predictor._run = lambda buffer, on_error: held.append(sum(s.tokens for s in buffer)) or run(buffer, on_error)
    results = predictor.predict_all([(wave[: RATE * (1 + i % 3)], RATE) for i in range(16)])
    assert len(results) == 16 and len(held) > 5
    one_window = 2 * 3  # 0.5 s: 48 frames, 3 patch columns of 2 tokens
    assert max(held) <= 4 * 24 + one_window


def test_whole_file_features_in_blocks_equal_one_call(monkeypatch):
    wave = torch.from_numpy(tone(3.3)[:, 0])
    one_call = audio_to_spectrogram(wave, RATE, num_mel_bins=32, normalize=FEATURES.normalize)
    monkeypatch.setattr(spectrograms, "_BLOCK_FRAMES", 48)
    for quality in (1.0, 2.0):
        features = FeatureSettings(num_mel_bins=32, normalize=FEATURES.normalize, quality=quality)
        expected = audio_to_spectrogram(wave, RATE, quality, num_mel_bins=32, normalize=FEATURES.normalize)
        blocks = spectrogram(wave, features, 16)
        assert blocks.shape == expected.shape and blocks.shape[2] % 16 == 0
        torch.testing.assert_close(blocks, expected, atol=1e-5, rtol=1e-5)
    assert one_call.shape[2] == 320


def test_window_bounds_cover_every_sample_with_full_windows():
    assert window_bounds(100, 100, 50) == [(0, 100)]
    assert window_bounds(30, 100, 50) == [(0, 30)]
    assert window_bounds(200, 100, 50) == [(0, 100), (50, 150), (100, 200)]
    assert window_bounds(230, 100, 50) == [(0, 100), (50, 150), (100, 200), (130, 230)]
    assert window_bounds(230, 100, 100) == [(0, 100), (100, 200), (130, 230)]
    for window, hop in ((0, 1), (10, 0), (10, 11)):
        with pytest.raises(ValueError, match="hop <= window"):
            window_bounds(100, window, hop)


def test_devices_and_options_are_checked_by_name(model_file):
    path, model, card = model_file
    assert resolve_device("cpu").type == "cpu" and resolve_device("auto").type in ("cpu", "cuda")
    for bad in ("tpu", "nonsense", "meta"):
        with pytest.raises(ValueError, match="device must be"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(TypeError, match="max_tokens must be an int, got float"):
        Predictor(model, card, device="cpu", max_tokens=2.5)
    for options, match in (({"max_tokens": 0}, "max_tokens"),
                           ({"long": "chunks"}, "long must be"), ({"window_s": -1.0}, "window_s"),
                           ({"hop_s": float("nan")}, "hop_s"), ({"window_s": 1.0, "hop_s": 2.0}, "must not exceed"),
                           ({"window_s": 0.01}, "shorter than one")):
        with pytest.raises(ValueError, match=match):
            Predictor(model, card, device="cpu", **options)
    with pytest.raises(TypeError, match="ModelCard"):
        Predictor(model, card.to_dict(), device="cpu")
    with pytest.raises(ValueError, match="on_error"):
        next(Predictor(model, card, device="cpu").predict([], on_error="ignore"))
