"""The server builds as a wheel that installs with no index at all (hosts without internet)."""

import subprocess
import sys


def test_wheel_and_pinned_dependencies_install_offline(tmp_path, built_wheels):
    wheels = built_wheels / "cache"  # what `make wheels` builds
    names = sorted(p.name.split("-")[0].lower() for p in wheels.glob("*.whl"))
    assert "nxfarm_cache_server" in names and "httptools" in names and "xxhash" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-index",
                    "--find-links", str(wheels), "nxfarm-cache-server"], check=True, capture_output=True, timeout=300)
    version = subprocess.run([str(venv / "bin" / "python"), "-m", "cache_server", "--version"], cwd=tmp_path,
                             capture_output=True, text=True, check=True)
    assert version.stdout.strip() == "python -m cache_server 0.1.0"
    assert (venv / "bin" / "nxfarm-cache-server").exists()
