"""`make install`: the documented way to get `nxfarm` and `just` on PATH works, and says when
the directory it used is not on PATH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_install_links_working_commands_and_names_a_missing_path_entry(tmp_path):
    bindir = tmp_path / "bin"
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    result = subprocess.run(["make", "-C", str(ROOT), "install", f"BINDIR={bindir}"], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{bindir}, which is not on your PATH: add it" in result.stdout
    version = subprocess.run([str(bindir / "nxfarm"), "--version"], env=env, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.startswith("nxfarm ")
    recipes = subprocess.run([str(bindir / "just"), "--justfile", str(ROOT / "justfile"), "--summary"], env=env,
                             capture_output=True, text=True)
    assert "nx-distributed-build" in recipes.stdout.split()
    again = subprocess.run(["make", "-C", str(ROOT), "install", f"BINDIR={bindir}"],
                           env={**env, "PATH": f"{bindir}:/usr/bin:/bin"}, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"nxfarm and just are in {bindir}\n" in again.stdout, "idempotent"


def test_a_cold_install_says_what_it_does_and_lets_pip_show_progress():
    # -n -W: what make would run were requirements.txt newer than the venv; nothing is run
    result = subprocess.run(["make", "-C", str(ROOT), "-n", "-W", "requirements.txt", ".venv/.installed"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "installing nx-farm and its pinned Python dependencies" in result.stdout
    pip = next(line for line in result.stdout.splitlines() if "pip install" in line)
    assert "--quiet" not in pip and " -q" not in pip and "--progress-bar on" in pip
