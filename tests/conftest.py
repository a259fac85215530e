"""Test configuration: Triton runs in its interpreter on CPU (must be set before triton is imported);
GPU tests are marked ``gpu`` and skipped without CUDA; FASTGEOM_STRICT=1 makes fast-path bugs fail loudly."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1") if not os.environ.get("FASTGEOM_TEST_ON_GPU") else None

# an unexpected failure of a fast path re-raises instead of warning and falling back (engine/choice.py)
os.environ.setdefault("FASTGEOM_STRICT", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (much faster than oversubscribed threads on a shared 2-core machine)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
