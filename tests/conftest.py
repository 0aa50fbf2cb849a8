"""Shared test set-up: no network, no model hub, and a record of every blocked attempt."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NETBLOCK = Path(__file__).resolve().parent / "netblock"

# Subprocesses (notebook kernels, nbgrader) inherit these and load netblock/sitecustomize.py.
os.environ["BERTLAB_BLOCK_NETWORK"] = "1"
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETBLOCK), os.environ.get("PYTHONPATH")]))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `make test` sets it (Makefile): kernels inherit it
os.environ.pop("BERTLAB_MODEL", None)
os.environ.setdefault("BERTLAB_NETLOG", str(ROOT / ".pytest_cache" / f"netlog-{os.getpid()}.txt"))
Path(os.environ["BERTLAB_NETLOG"]).parent.mkdir(parents=True, exist_ok=True)
Path(os.environ["BERTLAB_NETLOG"]).write_text("")

sys.path.insert(0, str(NETBLOCK))
import sitecustomize as netblock  # noqa: E402  (this folder's, not a site one)

assert netblock.__file__.startswith(str(NETBLOCK)), f"another sitecustomize shadows the blocker: {netblock.__file__}"
netblock.install()


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", default=False,
                     help="also run every solution notebook in full, as a learner does (make test-full)")


def pytest_configure(config):
    config.addinivalue_line("markers", "network_attempt: the test expects blocked network attempts")


#: Why `make test` (CI) skips the learner's full runs; README, "Which tests run where".
FULL_ONLY = ("a learner's full run of every notebook (about 35 minutes on 2 cores): make test-full or make course;"
             " make test runs each solution top to bottom in grading mode (the simulated class's perfect student)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--full"):
        return
    for item in items:
        if item.get_closest_marker("full") is not None:
            item.add_marker(pytest.mark.skip(reason=FULL_ONLY))


@pytest.fixture(autouse=True)
def _no_hidden_downloads(request):
    """Fail any test during which some process tried to reach the network."""
    log = Path(os.environ["BERTLAB_NETLOG"])
    before = log.read_text().splitlines() if log.exists() else []
    yield
    after = log.read_text().splitlines() if log.exists() else []
    new = after[len(before):]
    if new and request.node.get_closest_marker("network_attempt") is None:
        pytest.fail(f"{len(new)} blocked network attempt(s) during this test, e.g. {new[0]}")


@pytest.fixture
def one_torch_thread():
    """Tiny models: a second torch thread only adds synchronisation (and, on a busy machine,
    waiting). Test modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
