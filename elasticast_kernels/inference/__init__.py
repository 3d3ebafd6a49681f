"""Inference: a saved model plus audio (files or waveforms, any rate, any channel count) -> scores.

    from elasticast_kernels.inference import Predictor

    predictor = Predictor.from_file("ckpt/last.pt")           # or a save_model file; device="auto"
    for result in predictor.predict(["a.wav", "b.flac", (samples, 44100)]):
        print(result.source, result.duration_s, result.top(3))

The model file's card supplies everything: the constructor arguments (softmax scale included),
the class names, single- or multi-label (softmax or sigmoid scores), and the feature settings
(sample rate, fbank options, normalisation). Many files are packed into forwards of at most
``max_tokens`` tokens, so memory follows that budget, not the number of files. Long audio is
scored in overlapping windows by default (``long="window"``: the file score is the mean of the
window scores, every window's scores are kept) or as one sequence (``long="whole"``).

The same from a shell: ``elasticast-predict CHECKPOINT INPUT...`` (`elasticast_kernels.inference.cli`).
"""
from .engine import LONG_MODES, Predictor, resolve_device
from .inputs import AudioInput, Waveform
from .results import Prediction, WindowScores, top_k

__all__ = ["AudioInput", "LONG_MODES", "Prediction", "Predictor", "Waveform", "WindowScores", "predict",
           "resolve_device", "top_k"]


def predict(checkpoint, inputs, *, embeddings: bool = False, on_error: str = "raise", **options) -> list[Prediction]:
    """Score ``inputs`` with the model in ``checkpoint`` in one call:
    ``Predictor.from_file(checkpoint, **options).predict_all(inputs, ...)`` (see there)."""
    return Predictor.from_file(checkpoint, **options).predict_all(inputs, embeddings=embeddings, on_error=on_error)
