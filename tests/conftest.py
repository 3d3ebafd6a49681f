"""Test configuration.

Without a GPU the Triton kernels run in the interpreter, which Triton picks when a kernel module
is imported, so ``TRITON_INTERPRET=1`` is set here, before the package is imported. Ops then send
CPU tensors through the Triton kernels; tests that want the plain torch CPU path (the model tests)
use the ``torch_cpu_path`` fixture, which unsets the variable for that test only.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

# Triton reads TRITON_INTERPRET into its settings when it is first imported; import it now, while
# the variable is set, so a test that unsets it (torch_cpu_path) cannot be the first importer.
try:
    import triton  # noqa: F401
except ImportError:
    pass



def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` need CUDA: skip them, with the reason, on machines without it."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (marked gpu)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def torch_cpu_path(monkeypatch):
    """Run ops on CPU tensors through the plain torch path instead of the Triton interpreter."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
