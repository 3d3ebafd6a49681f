"""Train a small ElasticAST on variable-length spoken words (kept for compatibility: it is ``train.py``).

``python examples/train_spoken.py [options]`` runs ``examples/train.py`` with the same options:
the spoken-word demo (``espeak-ng`` words, or a clearly labelled SYNTHETIC TONE dataset when
espeak-ng is missing) written as wav files plus manifests and read back through
``elasticast_kernels.data.ManifestDataset``, Kaldi-compatible features at several time
resolutions in the loader workers, packed steps, one process or ``torchrun``. See ``train.py
--help``.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
