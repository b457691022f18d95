"""Generate a small real Nx workspace and run the real `nx` client (pinned in package.json beside this file).

Five projects in a diamond (lib-a <- lib-b, lib-c <- lib-d <- app, app also on lib-c), every build
`dependsOn: ["^build"]`, cacheable, with declared outputs. Each task appends to `.harness/exec.log`,
which is no task's input or output, so a test can tell whether a task really ran.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

NX_CLIENT_DIR = Path(__file__).parent
NX_BIN = NX_CLIENT_DIR / "node_modules" / "nx" / "dist" / "bin" / "nx.js"
NX_VERSION = json.loads((NX_CLIENT_DIR / "package.json").read_text())["devDependencies"]["nx"]

PROJECTS: dict[str, tuple[str, list[str]]] = {
    "lib-a": ("libs/lib-a", []),
    "lib-b": ("libs/lib-b", ["lib-a"]),
    "lib-c": ("libs/lib-c", ["lib-a"]),
    "lib-d": ("libs/lib-d", ["lib-b", "lib-c"]),
    "app": ("apps/app", ["lib-d", "lib-c"]),
}

BUILD_JS = r"""
const fs = require('fs'), path = require('path'), crypto = require('crypto');
const [root, ...deps] = process.argv.slice(2);
const depRoots = JSON.parse(fs.readFileSync('tools/roots.json', 'utf8'));
const dist = path.join(root, 'dist');
fs.mkdirSync(path.join(dist, 'nested', 'deeper'), { recursive: true });
const depHashes = deps.map(d => {
  const main = fs.readFileSync(path.join(depRoots[d], 'dist', 'main.js'));
  return d + ':' + crypto.createHash('sha256').update(main).digest('hex');
});
fs.writeFileSync(path.join(dist, 'main.js'), `// ${root}\nmodule.exports = ${JSON.stringify(depHashes)};\n`);
fs.writeFileSync(path.join(dist, 'blob.bin'), crypto.randomBytes(root.startsWith('apps') ? 200000 : 4096));
fs.writeFileSync(path.join(dist, 'nested', 'deeper', 'meta.json'), JSON.stringify({ root, deps }));
fs.writeFileSync(path.join(dist, 'nested', 'empty-marker'), '');
fs.mkdirSync('.harness', { recursive: true });
fs.appendFileSync(path.join('.harness', 'exec.log'), root + '\n');
console.log(`[build.js] ${root}: built with ${deps.length} dependencies`);
"""


@dataclass
class NxRun:
    returncode: int
    output: str

    def remote_hits(self) -> int:
        return sum(1 for line in self.output.splitlines() if line.startswith("> nx run") and "[remote cache]" in line)


class Workspace:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "node_modules").symlink_to(NX_CLIENT_DIR / "node_modules")
        (root / "package.json").write_text(json.dumps({"name": "farm-test-ws", "private": True}))
        (root / "nx.json").write_text(json.dumps({
            "$schema": "./node_modules/nx/schemas/nx-schema.json",
            "neverConnectToCloud": True,
            "useDaemonProcess": False,
            "analytics": False,
            "namedInputs": {"default": ["{projectRoot}/**/*"], "production": ["default", "!{projectRoot}/dist/**/*"]},
            "targetDefaults": {"build": {
                "dependsOn": ["^build"], "cache": True,
                "inputs": ["production", "^production", "{workspaceRoot}/tools/build.js"],
                "outputs": ["{projectRoot}/dist"],
            }},
        }, indent=2))
        (root / "tools").mkdir()
        (root / "tools" / "build.js").write_text(BUILD_JS)
        (root / "tools" / "roots.json").write_text(json.dumps({name: r for name, (r, _) in PROJECTS.items()}))
        salt = secrets.token_hex(8)  # unique task hashes per workspace, so runs never share entries by accident
        for name, (project_root, deps) in PROJECTS.items():
            directory = root / project_root
            (directory / "src").mkdir(parents=True)
            (directory / "src" / "index.js").write_text(f"// {name} {salt}\n")
            (directory / "project.json").write_text(json.dumps({
                "name": name,
                "root": project_root,
                "implicitDependencies": deps,
                "targets": {"build": {"executor": "nx:run-commands",
                                      "options": {"command": f"node tools/build.js {project_root} {' '.join(deps)}"}}},
            }, indent=2))

    def nx(self, *args: str, cache_url: str | None, token: str | None, timeout: float = 300) -> NxRun:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("NX_SKIP", "NX_DISABLE", "NX_SELF_HOSTED"))
               and k not in ("NX_CACHE_DIRECTORY", "NX_CACHE_FAILURES", "FORCE_COLOR")}
        env.update(NX_NO_CLOUD="true", NX_DAEMON="false", NX_TUI="false", CI="true", NO_COLOR="1",
                   NO_PROXY="127.0.0.1,localhost,::1", no_proxy="127.0.0.1,localhost,::1")
        if cache_url:
            env["NX_SELF_HOSTED_REMOTE_CACHE_SERVER"] = cache_url
        if token is not None:
            env["NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN"] = token
        result = subprocess.run(["node", str(NX_BIN), *args], cwd=self.root, env=env, capture_output=True,
                                text=True, timeout=timeout)
        return NxRun(result.returncode, result.stdout + result.stderr)

    def build(self, cache_url: str | None, token: str | None) -> NxRun:
        return self.nx("run-many", "-t", "build", "--output-style=static", cache_url=cache_url, token=token)

    def executed(self) -> list[str]:
        log = self.root / ".harness" / "exec.log"
        return log.read_text().split() if log.exists() else []

    def reset_local_state(self) -> None:
        """`nx reset`, then remove outputs and the execution log: only the remote cache can restore them."""
        result = self.nx("reset", cache_url=None, token=None)
        assert result.returncode == 0, result.output
        for _, (project_root, _) in PROJECTS.items():
            shutil.rmtree(self.root / project_root / "dist", ignore_errors=True)
        shutil.rmtree(self.root / ".harness", ignore_errors=True)
        local_cache = self.root / ".nx" / "cache"
        assert not local_cache.exists() or not any(local_cache.iterdir())

    def outputs(self) -> dict[str, tuple[str, int]]:
        """sha256 and mode of every output file and directory."""
        found: dict[str, tuple[str, int]] = {}
        for _, (project_root, _) in PROJECTS.items():
            dist = self.root / project_root / "dist"
            for path in sorted(dist.rglob("*")):
                digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
                found[str(path.relative_to(self.root))] = (digest, path.stat().st_mode)
        return found
