"""Wheel sets built on the operator box (`make wheels`) and shipped to hosts without internet.

Homelab hosts mix Pythons and CPUs, so there is one set per platform a host may have:
`dist/wheels/<role>/<platform>/`, e.g. `dist/wheels/agent/cp313-aarch64/`: our own package as a
pure-Python wheel plus every locked dependency as pip downloaded it for that Python and CPU
(components/wheelhouse.py builds them). Before any resource, the program checks that the set a
host needs is complete: every locked dependency has a wheel that installs there.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

# Supported hosts have glibc 2.36 or newer (Debian 12, Debian 13, Ubuntu 24.04): a wheel may ask
# for at most that.
GLIBC_MINOR = 36


class WheelsMissing(Exception):
    """The wheels to ship were not built (`make wheels`), or a set lacks a wheel a host needs."""


def platform_name(python: str, arch: str) -> str:
    return f"cp{python.replace('.', '')}-{arch}"


def manylinux_platforms(arch: str) -> list[str]:
    """Newest first, as pip's `--platform` takes them (it does not expand one into older ones)."""
    return [f"manylinux_2_{minor}_{arch}" for minor in range(GLIBC_MINOR, 16, -1)] + [f"manylinux2014_{arch}"]


def supported_tags(python: str, arch: str) -> set[Tag]:
    version = tuple(int(part) for part in python.split("."))
    platforms = manylinux_platforms(arch)
    return set(cpython_tags(version, platforms=platforms)) | set(
        compatible_tags(version, interpreter=f"cp{version[0]}{version[1]}", platforms=platforms))


def locked(lock: Path) -> list[tuple[str, str]]:
    """(name, version) of every `name==version` line of a lock file."""
    pins = []
    for line in lock.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins.append((canonicalize_name(name), version.strip()))
    return pins


def wheel_set(root: Path, distribution: str, locks: list[Path], python: str, arch: str, where: str) -> Path:
    """The directory of wheels for this host, checked complete; WheelsMissing names what is not."""
    directory = root / platform_name(python, arch)
    fix = f"run `make wheels` (it builds every supported platform, {platform_name(python, arch)} included)"
    tags = supported_tags(python, arch)
    found: dict[str, list[tuple[str, frozenset[Tag]]]] = {}
    for wheel in directory.glob("*.whl"):
        name, version, _, wheel_tags = parse_wheel_filename(wheel.name)
        found.setdefault(name, []).append((str(version), wheel_tags))
    wanted = [(canonicalize_name(distribution), None), *(pin for lock in locks for pin in locked(lock))]
    for name, version in wanted:
        if not any((version is None or have == version) and wheel_tags & tags for have, wheel_tags in found.get(name, [])):
            pin = f"{name}=={version}" if version else name
            raise WheelsMissing(f"{where}: no wheel of {pin} fits Python {python} on {arch} in {directory}: {fix}")
    return directory


def wheels_digest(directory: Path, distribution: str) -> str:
    """A digest of the wheel set: part of the install command, so new code means an update run."""
    wheels = sorted(directory.glob("*.whl"))
    if not any(w.name.startswith(f"{distribution}-") for w in wheels):
        raise WheelsMissing(f"{directory} has no {distribution} wheel: run `make wheels` before `pulumi up`")
    digest = hashlib.sha256()
    for wheel in wheels:
        digest.update(wheel.name.encode() + b"\0" + hashlib.sha256(wheel.read_bytes()).digest())
    return digest.hexdigest()[:16]
