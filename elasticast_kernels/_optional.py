"""Optional dependencies: import them where they are needed, with a message naming the extra.

The package's core needs torch, numpy and triton only. Audio files (soundfile, soxr), plots
(matplotlib), Hugging Face models (transformers) and the benchmark tools come with extras; a
missing one is an ImportError that says which ``pip install`` brings it, not a bare
``ModuleNotFoundError``.
"""
from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["EXTRAS", "import_optional"]

#: module -> the extra of elasticast-kernels that installs it
EXTRAS = {
    "soundfile": "audio",
    "soxr": "audio",
    "matplotlib": "plot",
    "pytest_benchmark": "bench",
    "transformers": "hf",
    "safetensors": "hf",
    "hypothesis": "dev",
    "xformers": "xformers",
    "flash_attn": "flash",
}


def import_optional(module: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or an ImportError naming the extra to install.

    Args:
        module: a key of :data:`EXTRAS` (or a submodule of one, e.g. ``"matplotlib.pyplot"``).
        purpose: what needs it, for the message ("reading audio files").

    Raises:
        ImportError: the module is missing (or broken); the message says
            ``pip install "elasticast-kernels[<extra>]"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        extra = EXTRAS.get(module.split(".")[0])
        hint = f'pip install "elasticast-kernels[{extra}]"' if extra else f"pip install {module.split('.')[0]}"
        raise ImportError(f"{purpose} needs the {module.split('.')[0]!r} package, which is not installed "
                          f"({error}); install it with: {hint}") from error
