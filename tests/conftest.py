"""Test session setup.

Without a GPU, Triton kernels run under the interpreter on CPU tensors; that mode is fixed when
the kernels are decorated, so it is switched on here, before anything imports attn. Every
launcher's outputs are poisoned (NaN) so unwritten elements fail parity checks.
"""
import os

import pytest
import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("ATTN_POISON_OUTPUTS", "1")
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

DEVICE = "cuda" if HAS_GPU else "cpu"


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)


@pytest.fixture
def device():
    return DEVICE
