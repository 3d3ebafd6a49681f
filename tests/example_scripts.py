"""Import ``examples/train.py`` (and, through it, ``examples/spoken_words.py``) as modules, for the
tests that run the training example in-process."""
from __future__ import annotations

import importlib
import pathlib
import sys

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def import_train_example():
    """The ``train`` module of examples/ (``spoken_words`` becomes importable too: train.py puts
    examples/ on ``sys.path``)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module("train")
    finally:
        sys.path.remove(str(EXAMPLES))


def write_tone_manifests(out_dir, clips_per_word: int, seed: int = 5) -> tuple[str, str]:
    """The demo's synthetic tones (no espeak-ng, so the same data on every machine) written as wav
    files plus ``train.csv`` / ``test.csv`` into ``out_dir``. -> (train manifest, test manifest)."""
    import_train_example()  # puts examples/ on the path for spoken_words
    from spoken_words import synthesise, write_dataset

    return write_dataset(synthesise(clips_per_word, seed=seed, use_espeak=False), str(out_dir), 0.2, seed=seed)
