"""Test configuration: Triton runs in its interpreter on CPU (must be set before triton is imported);
GPU tests are marked ``gpu`` and skipped without CUDA."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1") if not os.environ.get("FASTGEOM_TEST_ON_GPU") else None

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
