"""A developer's own Nx workspace, unlike the demo's: other project names and layout, an
inferred-free `project.json` per package under `packages/`, a build that writes `build/`,
branch `master`, no `origin` remote. Nx is pinned by the demo template's lockfile, so agents
install it with `npm ci` as they would for any workspace; the orchestrator links the test
suite's installed Nx."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from nxfarm.demo.workspace import TEMPLATE

from tests.nx_client.workspace import NX_CLIENT_DIR

PACKAGES = {"shared-utils": [], "ui-kit": ["shared-utils"], "api": ["shared-utils"], "web": ["ui-kit", "api"]}

BUILD = ("node -e \"const fs=require('fs');fs.mkdirSync('packages/{name}/build',{{recursive:true}});"
         "fs.writeFileSync('packages/{name}/build/out.txt','{name} built from '+"
         "fs.readFileSync('packages/{name}/index.js','utf8'))\"")


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True).stdout


def own_workspace(root: Path) -> Path:
    root.mkdir(parents=True)
    package = json.loads((TEMPLATE / "package.json").read_text())
    package["name"] = "my-own-monorepo"
    (root / "package.json").write_text(json.dumps(package, indent=2))
    shutil.copy(TEMPLATE / "package-lock.json", root / "package-lock.json")
    (root / "nx.json").write_text(json.dumps({
        "neverConnectToCloud": True, "useDaemonProcess": False, "analytics": False,
        "targetDefaults": {"build": {"dependsOn": ["^build"], "cache": True,
                                     "inputs": ["{projectRoot}/index.js"], "outputs": ["{projectRoot}/build"]}},
    }, indent=2))
    (root / ".gitignore").write_text("node_modules\nbuild\n.nx\n")
    for name, deps in PACKAGES.items():
        directory = root / "packages" / name
        directory.mkdir(parents=True)
        (directory / "index.js").write_text(f"module.exports = '{name}';\n")
        (directory / "project.json").write_text(json.dumps({
            "name": name, "root": f"packages/{name}", "implicitDependencies": deps,
            "targets": {"build": {"executor": "nx:run-commands", "options": {"command": BUILD.format(name=name)}}},
        }, indent=2))
    (root / "node_modules").symlink_to(NX_CLIENT_DIR / "node_modules")
    git(root, "init", "--quiet", "--initial-branch", "master")
    git(root, "-c", "user.name=dev", "-c", "user.email=dev@example.invalid", "add", "-A")
    git(root, "-c", "user.name=dev", "-c", "user.email=dev@example.invalid", "commit", "--quiet", "-m", "mine")
    return root
