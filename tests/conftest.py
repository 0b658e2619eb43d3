"""Suite-wide pytest setup: tests marked ``cuda`` are skipped where no CUDA device is visible."""
import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device; torch.cuda.is_available() is False")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _private_preflight_cache(tmp_path_factory):
    """The preflight keeps its reports in a user-level folder: a session of its own, so the suite
    neither writes into ~/.cache nor reuses a report another run left there."""
    import os

    os.environ["PHASENETS_CACHE_DIR"] = str(tmp_path_factory.mktemp("phasenets-cache"))
