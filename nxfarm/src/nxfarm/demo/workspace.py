"""The demo's Nx workspace in a git repository with a bare `origin` the agents fetch from.

Nine projects with diamonds (lib-a <- lib-b, lib-c <- lib-d <- lib-f <- app-1, ...), every build
cacheable with `dependsOn: ["^build"]` and declared outputs. Builds are deterministic (each
output is a digest of the project's sources and its dependencies' outputs), so a distributed
build can be compared byte for byte with a plain local one. Each run appends the project to
`.harness/exec.log` (neither input nor output) so a test can tell where tasks executed.
`tools/delay.json` makes chosen builds take longer (ms), to kill a worker while they run, fail
(a negative value), or fail once (a file path: it fails while the file is missing, and makes it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

TEMPLATE = Path(__file__).with_name("template")  # package.json + package-lock.json pinning nx

PROJECTS: dict[str, tuple[str, list[str]]] = {
    "lib-a": ("libs/lib-a", []),
    "lib-b": ("libs/lib-b", ["lib-a"]),
    "lib-c": ("libs/lib-c", ["lib-a"]),
    "lib-d": ("libs/lib-d", ["lib-b", "lib-c"]),
    "lib-e": ("libs/lib-e", ["lib-a"]),
    "lib-f": ("libs/lib-f", ["lib-d", "lib-e"]),
    "app-1": ("apps/app-1", ["lib-f"]),
    "app-2": ("apps/app-2", ["lib-d"]),
    "app-3": ("apps/app-3", ["lib-c", "lib-e"]),
}

BUILD_JS = r"""
const fs = require('fs'), path = require('path'), crypto = require('crypto');
const [name, root, ...deps] = process.argv.slice(2);
const roots = JSON.parse(fs.readFileSync('tools/roots.json', 'utf8'));
const delays = JSON.parse(fs.readFileSync('tools/delay.json', 'utf8'));
const ms = delays[name] ?? delays['*'] ?? 0;
if (typeof ms === 'string' && !fs.existsSync(ms)) {  // flaky: fails once, while the marker file is missing
  fs.writeFileSync(ms, name); console.error(`[build.js] ${name}: failing once (flaky)`); process.exit(4);
}
if (ms < 0) { console.error(`[build.js] ${name}: failing as tools/delay.json says`); process.exit(3); }
if (typeof ms === 'number' && ms > 0) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
const h = crypto.createHash('sha256').update(fs.readFileSync(path.join(root, 'src', 'index.js')));
for (const d of deps) h.update(d + ':' + fs.readFileSync(path.join(roots[d], 'dist', 'main.txt'), 'utf8'));
const digest = h.digest('hex');
fs.mkdirSync(path.join(root, 'dist', 'nested'), { recursive: true });
fs.writeFileSync(path.join(root, 'dist', 'main.txt'), digest);
fs.writeFileSync(path.join(root, 'dist', 'nested', 'deps.json'), JSON.stringify({ name, deps }));
fs.writeFileSync(path.join(root, 'dist', 'blob.bin'), Buffer.alloc(8192, digest));
fs.mkdirSync('.harness', { recursive: true });
fs.appendFileSync(path.join('.harness', 'exec.log'), name + '\n');
console.log(`[build.js] ${name}: built with ${deps.length} dependencies`);
"""


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                            env={**os.environ, "GIT_AUTHOR_NAME": "nx-farm demo", "GIT_AUTHOR_EMAIL": "demo@example.invalid",
                                 "GIT_COMMITTER_NAME": "nx-farm demo", "GIT_COMMITTER_EMAIL": "demo@example.invalid"})
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


class FarmWorkspace:
    def __init__(self, root: Path, origin: Path, salt: str, delays: dict[str, int | str] | None = None,
                 projects: dict[str, tuple[str, list[str]]] | None = None,
                 node_modules: Path | None = None) -> None:
        """`node_modules`: link an installed one (ignored by git) instead of running `npm ci`."""
        self.root, self.origin = root, origin
        self.projects = projects or PROJECTS
        root.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(TEMPLATE / name, root / name)
        (root / ".gitignore").write_text("node_modules\ndist\n.nx\n.harness\n")
        (root / "nx.json").write_text(json.dumps({
            "neverConnectToCloud": True, "useDaemonProcess": False, "analytics": False,
            "namedInputs": {"default": ["{projectRoot}/**/*"], "production": ["default", "!{projectRoot}/dist/**/*"]},
            "targetDefaults": {"build": {
                "dependsOn": ["^build"], "cache": True,
                "inputs": ["production", "^production", "{workspaceRoot}/tools/build.js", "{workspaceRoot}/tools/delay.json"],
                "outputs": ["{projectRoot}/dist"],
            }},
        }, indent=2))
        (root / "tools").mkdir()
        (root / "tools" / "build.js").write_text(BUILD_JS)
        (root / "tools" / "roots.json").write_text(json.dumps({n: r for n, (r, _) in self.projects.items()}))
        (root / "tools" / "delay.json").write_text(json.dumps(delays or {}))
        for name, (project_root, deps) in self.projects.items():
            (root / project_root / "src").mkdir(parents=True)
            (root / project_root / "project.json").write_text(json.dumps({
                "name": name, "root": project_root, "implicitDependencies": deps,
                "targets": {"build": {"executor": "nx:run-commands",
                                      "options": {"command": f"node tools/build.js {name} {project_root} {' '.join(deps)}"}}},
            }, indent=2))
        self._write_sources(salt)
        subprocess.run(["git", "init", "--quiet", "--bare", str(origin)], check=True)
        git(root, "init", "--quiet", "-b", "main")
        git(root, "add", "-A")
        git(root, "commit", "--quiet", "-m", "workspace")
        git(root, "remote", "add", "origin", str(origin))
        git(root, "push", "--quiet", "origin", "main")
        git(root, "fetch", "--quiet", "origin")
        if node_modules is not None:
            (root / "node_modules").symlink_to(node_modules)  # ignored: the tree stays clean
        else:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"],
                           cwd=root, check=True, capture_output=True, timeout=900)

    def _write_sources(self, salt: str) -> None:
        for name, (project_root, _) in self.projects.items():
            (self.root / project_root / "src" / "index.js").write_text(f"// {name} {salt}\n")

    def new_commit(self, salt: str) -> None:
        """Change every project's source, commit and push: every task hash changes."""
        self._write_sources(salt)
        git(self.root, "commit", "--quiet", "-am", f"salt {salt}")
        git(self.root, "push", "--quiet", "origin", "main")
        git(self.root, "fetch", "--quiet", "origin")

    def executed(self) -> list[str]:
        log = self.root / ".harness" / "exec.log"
        return log.read_text().split() if log.exists() else []

    def clear_outputs(self) -> None:
        for _, (project_root, _) in self.projects.items():
            shutil.rmtree(self.root / project_root / "dist", ignore_errors=True)
        shutil.rmtree(self.root / ".harness", ignore_errors=True)
        shutil.rmtree(self.root / ".nx", ignore_errors=True)

    def outputs(self) -> dict[str, str]:
        found = {}
        for _, (project_root, _) in self.projects.items():
            for path in sorted((self.root / project_root / "dist").rglob("*")):
                if path.is_file():
                    found[str(path.relative_to(self.root))] = hashlib.sha256(path.read_bytes()).hexdigest()
        return found
