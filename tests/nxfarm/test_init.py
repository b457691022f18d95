"""`nxfarm init` on real Nx workspaces (Nx 24 and 23): real Nx must then treat build, test and
lint as cacheable; the user's own settings survive; a second run changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nxfarm.init import plan
from tests.nx_client.workspace import NX_CLIENT_DIR

from .farm_procs import clean_env

NXFARM = str(Path(sys.executable).with_name("nxfarm"))
CLIENTS = {"24": NX_CLIENT_DIR / "node_modules", "23": NX_CLIENT_DIR / "nx23" / "node_modules"}


def make_workspace(root: Path, major: str, nx_json: dict) -> Path:
    if not CLIENTS[major].exists():
        pytest.skip(f"nx {major} not installed (make test installs it)")
    root.mkdir()
    (root / "node_modules").symlink_to(CLIENTS[major])
    (root / "package.json").write_text(json.dumps({"name": "ws", "private": True}))
    (root / "nx.json").write_text(json.dumps(nx_json, indent=2))
    (root / "app").mkdir()
    (root / "app" / "project.json").write_text(json.dumps({"name": "app", "root": "app", "targets": {
        target: {"executor": "nx:run-commands", "options": {"command": f"echo {target}"}}
        for target in ("build", "test", "lint", "serve")}}))
    return root


def cacheable(root: Path) -> dict[str, bool]:
    result = subprocess.run(["node", str(root / "node_modules" / "nx" / "dist" / "bin" / "nx.js"), "run-many", "-t", "build",
                             "test", "lint", "serve", "--graph=stdout"], cwd=root, capture_output=True, text=True,
                            env=clean_env(root.parent / "home"), timeout=120)
    assert result.returncode == 0, result.stderr
    tasks = json.loads(result.stdout[result.stdout.index("{"):])["tasks"]["tasks"]
    return {task["target"]["target"]: bool(task.get("cache")) for task in tasks.values()}


def init(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NXFARM, "init", str(root), *args], capture_output=True, text=True)


@pytest.mark.parametrize("major", ["24", "23"])
def test_init_makes_build_test_lint_cacheable_for_real_nx_and_is_idempotent(tmp_path, major):
    root = make_workspace(tmp_path / "ws", major, {"targetDefaults": {"serve": {"cache": False}}})
    assert cacheable(root) == {"build": False, "test": False, "lint": False, "serve": False}
    dry = init(root, "--dry-run", "--cache-url", "http://100.101.0.10:3333")
    assert dry.returncode == 0 and "+export NX_SELF_HOSTED_REMOTE_CACHE_SERVER=http://100.101.0.10:3333" in dry.stdout
    assert not (root / ".envrc").exists() and cacheable(root)["build"] is False, "dry run writes nothing"
    done = init(root, "--cache-url", "http://100.101.0.10:3333")
    assert done.returncode == 0, done.stderr
    assert f"Nx {major}." in done.stdout
    assert cacheable(root) == {"build": True, "test": True, "lint": True, "serve": False}
    envrc = (root / ".envrc").read_text()
    assert 'NX_CACHE_DIRECTORY="$HOME/.local/state/nx-cache"' in envrc and "nx-farm/access-token" in envrc
    again = init(root, "--cache-url", "http://other:3333")
    assert again.returncode == 0 and "nothing to change" in again.stdout


def test_the_seed_legacy_form_is_migrated_and_user_values_survive(tmp_path):
    root = make_workspace(tmp_path / "ws", "24", {
        "tasksRunnerOptions": {"default": {"runner": "nx/tasks-runners/default", "options": {
            "cacheableOperations": ["build", "test", "lint", "e2e"], "cacheDirectory": "~/.local/state/nx-cache"}}},
        "targetDefaults": {"lint": {"cache": False, "inputs": ["default"]}},
    })
    (root / ".envrc").write_text("export NX_SELF_HOSTED_REMOTE_CACHE_SERVER=http://mine:3333\nuse nix\n")
    result = init(root)
    assert result.returncode == 0, result.stderr
    nx_json = json.loads((root / "nx.json").read_text())
    assert "tasksRunnerOptions" not in nx_json
    assert nx_json["targetDefaults"]["lint"] == {"cache": False, "inputs": ["default"]}, "never clobbered"
    assert nx_json["targetDefaults"]["e2e"] == {"cache": True}, "the legacy cacheableOperations carry over"
    assert "kept targetDefaults.lint.cache = false" in result.stdout
    envrc = (root / ".envrc").read_text()
    assert envrc.startswith("export NX_SELF_HOSTED_REMOTE_CACHE_SERVER=http://mine:3333\nuse nix\n")
    assert envrc.count("NX_SELF_HOSTED_REMOTE_CACHE_SERVER") == 1
    assert cacheable(root) == {"build": True, "test": True, "lint": False, "serve": False}


def test_old_nx_gets_what_it_understands():
    result = plan({}, (16, 5), "", "http://c:3333")
    assert result.nx_json["tasksRunnerOptions"]["default"]["options"]["cacheableOperations"] == ["build", "test", "lint"]
    assert "targetDefaults" not in result.nx_json
    assert any("no self-hosted remote cache" in note for note in result.notes)


def test_not_a_workspace_is_a_clear_error(tmp_path):
    result = init(tmp_path)
    assert result.returncode == 2 and "has no nx.json" in result.stderr
    (tmp_path / "nx.json").write_text("{ // comment\n}")
    result = init(tmp_path)
    assert result.returncode == 2 and "cannot read it as JSON" in result.stderr
