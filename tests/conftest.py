import subprocess

import pytest


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs of the test's own, to fill up or remount read-only (needs root)."""
    mountpoint = tmp_path / "fs"
    mountpoint.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mountpoint)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"needs root to mount a tmpfs: {result.stderr.strip()}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)
