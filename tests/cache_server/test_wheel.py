"""The server builds as a wheel that installs with no index at all (hosts without internet)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_and_pinned_dependencies_install_offline(tmp_path):
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "-w", str(wheels),
                    "-r", str(ROOT / "cache_server" / "requirements.lock"), str(ROOT / "cache_server")],
                   check=True, capture_output=True, timeout=600)
    names = sorted(p.name.split("-")[0].lower() for p in wheels.glob("*.whl"))
    assert "nxfarm_cache_server" in names and "aiohttp" in names and "xxhash" in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-index",
                    "--find-links", str(wheels), "nxfarm-cache-server"], check=True, capture_output=True, timeout=300)
    version = subprocess.run([str(venv / "bin" / "python"), "-m", "cache_server", "--version"], cwd=tmp_path,
                             capture_output=True, text=True, check=True)
    assert version.stdout.strip() == "python -m cache_server 0.1.0"
    assert (venv / "bin" / "nxfarm-cache-server").exists()
