"""Wheel sets built on the operator box (`make wheels`) and shipped to hosts without internet."""

from __future__ import annotations

import hashlib
from pathlib import Path


class WheelsMissing(Exception):
    """The wheels to ship were not built (`make wheels`)."""


def wheels_digest(directory: Path, distribution: str) -> str:
    """A digest of the wheel set: part of the install command, so new code means an update run."""
    wheels = sorted(directory.glob("*.whl"))
    if not any(w.name.startswith(f"{distribution}-") for w in wheels):
        raise WheelsMissing(f"{directory} has no {distribution} wheel: run `make wheels` before `pulumi up`")
    digest = hashlib.sha256()
    for wheel in wheels:
        digest.update(wheel.name.encode() + b"\0" + hashlib.sha256(wheel.read_bytes()).digest())
    return digest.hexdigest()[:16]
