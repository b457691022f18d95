"""The server builds as a wheel that installs with no index at all (hosts without internet)."""

import os
import subprocess
import sys


def test_wheel_and_pinned_dependencies_install_offline(tmp_path, built_wheels):
    wheels = built_wheels / "cache" / "cp311-x86_64"  # what `make wheels` builds for this machine
    names = sorted(p.name.split("-")[0].lower() for p in wheels.glob("*.whl"))
    assert "nxfarm_cache_server" in names and "httptools" in names and "xxhash" in names
    # Without the PYTHONPATH `make test` gives the tests: the new venv sees only what it installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "--no-index",
                    "--find-links", str(wheels), "nxfarm-cache-server"], check=True, capture_output=True, timeout=300,
                   env=env)
    version = subprocess.run([str(venv / "bin" / "python"), "-m", "cache_server", "--version"], cwd=tmp_path,
                             capture_output=True, text=True, check=True, env=env)
    assert version.stdout.strip() == "python -m cache_server 0.1.0"
    assert (venv / "bin" / "nxfarm-cache-server").exists()
    # What ships is the pure-Python build (it fits every host's Python and CPU), with no mypy beside it.
    probe = ("import importlib.util, cache_server.http.protocol as p; "
             "print(p.__file__); print(importlib.util.find_spec('mypy') is None)")
    origin, no_mypy = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True,
                                     text=True, check=True, env=env).stdout.split()
    assert origin.startswith(str(venv)) and origin.endswith(".py") and no_mypy == "True"
