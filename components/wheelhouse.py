"""`make wheels`: the wheel sets `pulumi up` ships, one per supported Python and CPU.

    python -m components.wheelhouse [--out dist/wheels] [--platforms cp311-x86_64,cp313-aarch64]

Our two packages are built once as pure-Python wheels (they fit every host); each platform's set
gets them plus every pin of the role's lock file, downloaded by pip for exactly that platform
(`--only-binary=:all:`, so nothing is compiled here for a host). A pin with no wheel for a
platform fails here, naming it, rather than on the host.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ._wheels import locked, manylinux_platforms, platform_name, wheel_set
from .settings import ARCHES, PYTHONS

ROOT = Path(__file__).resolve().parents[1]
CACHE_LOCK = ROOT / "cache_server" / "requirements.lock"
CACHE_S3_LOCK = ROOT / "cache_server" / "requirements-s3.lock"  # its [s3] extra, for cache hosts on S3 storage
AGENT_LOCK = ROOT / "nxfarm" / "requirements.lock"
# role -> (source tree, distribution, lock files); every set holds what any host of the role may install
ROLES = {
    "cache": (ROOT / "cache_server", "nxfarm_cache_server", [CACHE_LOCK, CACHE_S3_LOCK]),
    "agent": (ROOT / "nxfarm", "nxfarm", [AGENT_LOCK]),
}
ALL_PLATFORMS = [platform_name(python, arch) for python in PYTHONS for arch in ARCHES]


def pip(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"wheelhouse: pip {args[0]} failed:\n{result.stderr.strip()[-2000:]}")


def build(out: Path, platforms: list[str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        own = Path(scratch)
        for role, (source, distribution, locks) in ROLES.items():
            # From a copy: pip builds in the source tree, and two builds at once would share its build/.
            tree = shutil.copytree(source, own / "src" / role, ignore=_build_leftovers(source))
            pip("wheel", "--quiet", "--no-deps", "-w", str(own / role), str(tree))
            for platform in platforms:
                python, arch = _parse(platform)
                target = out / role / platform
                shutil.rmtree(target, ignore_errors=True)
                target.mkdir(parents=True)
                print(f"wheelhouse: {role} {platform}", flush=True)
                pip("download", "--quiet", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
                    "--python-version", python, "--abi", f"cp{python.replace('.', '')}",
                    *[arg for p in manylinux_platforms(arch) for arg in ("--platform", p)],
                    "-d", str(target), *[f"{name}=={version}" for lock in locks for name, version in locked(lock)])
                for wheel in (own / role).glob("*.whl"):
                    shutil.copy2(wheel, target)
                wheel_set(out / role, distribution, locks, python, arch, f"{role} {platform}")


def _build_leftovers(source: Path):  # noqa: ANN202 - a copytree ignore callback
    """Skip the tree's own build/ and *.egg-info at its top (not packages named `build`)."""
    def ignore(directory: str, names: list[str]) -> list[str]:
        if Path(directory) != source:
            return []
        return [n for n in names if n == "build" or n.endswith(".egg-info")]
    return ignore


def _parse(platform: str) -> tuple[str, str]:
    if platform not in ALL_PLATFORMS:
        raise SystemExit(f"wheelhouse: unknown platform {platform!r}: one of {', '.join(ALL_PLATFORMS)}")
    version, arch = platform.split("-", 1)
    return f"{version[2]}.{version[3:]}", arch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m components.wheelhouse", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist" / "wheels")
    parser.add_argument("--platforms", default=",".join(ALL_PLATFORMS),
                        help=f"comma-separated, default every supported one: {','.join(ALL_PLATFORMS)}")
    args = parser.parse_args(argv)
    build(args.out, [p for p in args.platforms.split(",") if p])


if __name__ == "__main__":
    main()
