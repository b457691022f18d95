"""`make wheels` for a platform this machine is not: every set is complete by pip's own resolver,
installing offline from the set alone for that Python and CPU, as the host will."""

import subprocess
import sys
from pathlib import Path

import pytest

from components._wheels import manylinux_platforms

ROOT = Path(__file__).resolve().parents[1]


AARCH64 = ["cp311-aarch64", "cp313-aarch64"]  # a Raspberry Pi on Debian 12, and on Debian 13


@pytest.fixture(scope="module")
def aarch64_sets(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheels")
    build = subprocess.run([sys.executable, "-m", "components.wheelhouse", "--out", str(out),
                            "--platforms", ",".join(AARCH64)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stderr
    return out


@pytest.mark.parametrize("platform", AARCH64)
def test_an_aarch64_set_installs_offline_for_its_platform(tmp_path, aarch64_sets, platform):
    python = f"{platform[2]}.{platform[3:].split('-')[0]}"
    for role, package in (("agent", "nxfarm"), ("cache", "nxfarm-cache-server")):
        found = aarch64_sets / role / platform
        assert not [w.name for w in found.glob("*.whl") if "x86_64" in w.name]
        resolved = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(tmp_path / f"{role}.json"),
             "--ignore-installed", "--no-index", "--find-links", str(found), "--only-binary=:all:",
             "--python-version", python, "--implementation", "cp", "--abi", f"cp{python.replace('.', '')}",
             *[arg for p in manylinux_platforms("aarch64") for arg in ("--platform", p)],
             "--target", str(tmp_path / "target"), package],
            capture_output=True, text=True, timeout=300)
        assert resolved.returncode == 0, resolved.stderr
        assert package.replace("-", "_") in (tmp_path / f"{role}.json").read_text().replace("-", "_")


def test_an_unknown_platform_is_refused_naming_the_supported_ones(tmp_path):
    result = subprocess.run([sys.executable, "-m", "components.wheelhouse", "--out", str(tmp_path),
                             "--platforms", "cp310-riscv64"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "unknown platform 'cp310-riscv64'" in result.stderr and "cp313-aarch64" in result.stderr
