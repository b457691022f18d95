"""The demo's workspace, with the test suite's installed Nx linked in (no `npm ci` per test)."""

from __future__ import annotations

from pathlib import Path

from nxfarm.demo.workspace import PROJECTS, FarmWorkspace as _FarmWorkspace

from tests.nx_client.workspace import NX_CLIENT_DIR

__all__ = ["PROJECTS", "FarmWorkspace"]


class FarmWorkspace(_FarmWorkspace):
    def __init__(self, root: Path, origin: Path, salt: str, delays: dict[str, int | str] | None = None,
                 projects: dict[str, tuple[str, list[str]]] | None = None) -> None:
        super().__init__(root, origin, salt, delays, projects, node_modules=NX_CLIENT_DIR / "node_modules")
