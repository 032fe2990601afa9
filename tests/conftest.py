import pytest
import torch

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(params=["native", "torch"])
def backend(request):
    """Run a test with the native CPU operator and again with the pure-PyTorch path.

    The native variant is skipped only where no C++ compiler exists (tests/test_native.py fails
    instead if a compiler is there but the build breaks).
    """
    import neuralsort as ns

    if request.param == "native" and not ns.backends.is_available():
        pytest.skip(f"native CPU operator unavailable: {ns.backends.status()}")
    with ns.backends.native(request.param == "native"):
        yield request.param
