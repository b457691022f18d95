import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import AGE_A, AGE_B, host_key

ROOT = Path(__file__).resolve().parents[1]


def own_tmpfs(tmp_path, options: str):
    """A tmpfs of the test's own, mounted with `options` (needs root: skips otherwise)."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs: {result.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture(scope="session")
def rgw(tmp_path_factory):
    """A real S3 server (Ceph RGW) for the session; started only when a test asks for it."""
    from .s3.rgw import Rgw

    server = Rgw(tmp_path_factory.mktemp("rgw")).start()
    yield server
    server.stop()


@pytest.fixture
def own_rgw(rgw, tmp_path):
    """An S3 server of the test's own, for tests that kill it (the session's is shared), on the
    packages the session's fetched; about 9 s to start."""
    from .s3.rgw import Rgw

    server = Rgw(tmp_path / "own-rgw").start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium, headless, over DevTools (tests/browser.py); installed if missing."""
    from .browser import Browser, ensure_chromium

    browser = Browser(ensure_chromium())
    yield browser
    browser.close()


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs, to fill up or remount read-only."""
    yield from own_tmpfs(tmp_path, "size=4m")


@pytest.fixture
def few_inodes(tmp_path):
    """A tmpfs with room for 64 MiB but only 200 inodes."""
    yield from own_tmpfs(tmp_path, "size=64m,nr_inodes=200")


@pytest.fixture
def raw_config():
    return {
        "cacheHost": {"name": "cache", "host": "100.64.0.10", "hostKey": host_key(1)},
        "agents": [
            {"name": "agent-1", "host": "100.64.0.11", "hostKey": host_key(2), "ageRecipient": AGE_A,
             "tags": ["tag:nx-agent"], "taskSlots": 4},
            {"name": "agent-2", "host": "100.64.0.12", "hostKey": host_key(3), "ageRecipient": AGE_B},
        ],
        "sops": {"operatorRecipients": [AGE_A]},
        "trust": {"repositories": ["https://git.example/team/*"]},
    }


# The platforms of the test hosts: Debian 12 (Python 3.11) and Debian 13 (Python 3.13), x86_64.
HOST_PLATFORMS = ["cp311-x86_64", "cp313-x86_64"]


@pytest.fixture(scope="session")
def built_wheels(tmp_path_factory):
    """What `make wheels` produces (dist/wheels/{cache,agent}/<platform>/), for the test hosts' platforms."""
    out = tmp_path_factory.mktemp("wheels")
    subprocess.run([sys.executable, "-m", "components.wheelhouse", "--out", str(out),
                    "--platforms", ",".join(HOST_PLATFORMS)], check=True, capture_output=True, timeout=900, cwd=ROOT)
    return out
