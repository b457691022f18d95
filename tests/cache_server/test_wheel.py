"""The server builds as a wheel that installs with no index at all (hosts without internet)."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_and_pinned_dependencies_install_offline(tmp_path, built_wheels):
    wheels = built_wheels / "cache" / "cp311-x86_64"  # what `make wheels` builds for this machine
    names = sorted(p.name.split("-")[0].lower() for p in wheels.glob("*.whl"))
    assert "nxfarm_cache_server" in names and "httptools" in names and "xxhash" in names
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the new venv sees only what it installed
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-index",
                    "--find-links", str(wheels), "nxfarm-cache-server"], check=True, capture_output=True, timeout=300,
                   env=env)
    version = subprocess.run([str(venv / "bin" / "python"), "-m", "cache_server", "--version"], cwd=tmp_path,
                             capture_output=True, text=True, check=True, env=env)
    assert version.stdout.strip() == "python -m cache_server 0.1.0"
    assert (venv / "bin" / "nxfarm-cache-server").exists()
    probe = "import cache_server.http.protocol as p; print(p.__file__)"
    origin = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True,
                            text=True, check=True, env=env).stdout.strip()
    assert origin.startswith(str(venv)) and origin.endswith(".py")


def test_every_shipped_set_carries_the_pure_wheel(built_wheels):
    """Hosts mix Pythons and CPUs: the wheel `pulumi up` ships must fit them all."""
    for platform in (built_wheels / "cache").iterdir():
        wheel = next(platform.glob("nxfarm_cache_server-*.whl"))
        assert wheel.name.endswith("-py3-none-any.whl"), wheel


def test_the_build_needs_no_compiler(tmp_path):
    """What `pip install -r requirements.txt` and `make wheels` make: a wheel for any platform, with
    no extension in it, built in isolation with no compiler."""
    env = dict(os.environ, CC="/bin/false")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check", "--no-deps",
                    "-w", str(tmp_path), str(ROOT / "cache_server")],
                   check=True, capture_output=True, env=env, timeout=300)
    wheel = next(tmp_path.glob("nxfarm_cache_server-*.whl"))
    assert wheel.name.endswith("-py3-none-any.whl")
    with zipfile.ZipFile(wheel) as archive:
        assert not [n for n in archive.namelist() if n.endswith(".so")]
