import subprocess
import sys
from pathlib import Path

import pytest

from . import testhosts

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def testhost_base():
    try:
        testhosts.check_prerequisites()
        testhosts.ensure_base()
    except testhosts.TestHostsUnavailable as exc:
        pytest.skip(f"no test hosts here: {exc}")
    yield
    testhosts.remove_bridge()


@pytest.fixture
def start_host(testhost_base):
    started = []

    def start(name, ip):
        host = testhosts.start(name, ip)
        started.append(host)
        return host

    yield start
    for host in started:
        testhosts.stop(host)


@pytest.fixture(scope="session")
def built_wheels(tmp_path_factory):
    """What `make wheels` produces: dist/wheels/cache and dist/wheels/agent."""
    out = tmp_path_factory.mktemp("wheels")
    for target, args in (("cache", ["-r", str(ROOT / "cache_server" / "requirements.lock"), str(ROOT / "cache_server")]),
                         ("agent", [str(ROOT / "nxfarm")])):
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                        "-w", str(out / target), *args], check=True, capture_output=True, timeout=600)
    return out
