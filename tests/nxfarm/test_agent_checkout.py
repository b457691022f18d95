"""An agent slot's checkout and dependency install, for real: git worktrees of a bare mirror, and
pnpm 10.22.0 (the seed's) with the agent's shared store, installing only when the lockfile changed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from nxfarm.agent.checkout import CheckoutError, Checkouts
from nxfarm.demo.workspace import git

from .farm_procs import clean_env

ROOT = Path(__file__).parents[2]
PNPM_BIN = ROOT / "tests" / "nx_client" / "node_modules" / ".bin"
FIXTURE = ROOT / "tests" / "fixtures" / "pnpm"

pytestmark = pytest.mark.skipif(not (PNPM_BIN / "pnpm").exists(), reason="pnpm not installed (make test installs it)")


def commit_all(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "--quiet", "-m", message)
    git(repo, "push", "--quiet", "origin", "main")
    return git(repo, "rev-parse", "HEAD").strip()


def test_pnpm_installs_once_per_lockfile_into_each_slot(tmp_path):
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    subprocess.run(["git", "init", "--quiet", "--bare", str(origin)], check=True)
    work.mkdir()
    git(work, "init", "--quiet", "-b", "main")
    git(work, "remote", "add", "origin", str(origin))
    shutil.copy(FIXTURE / "package.json", work / "package.json")
    shutil.copy(FIXTURE / "pnpm-lock.yaml", work / "pnpm-lock.yaml")
    (work / "nx.json").write_text("{}\n")
    first = commit_all(work, "one")

    env = clean_env(tmp_path / "home", PATH=f"{PNPM_BIN}:{os.environ['PATH']}")
    checkouts = Checkouts(tmp_path / "agent", slots=2)
    tree = checkouts.checkout(0, str(origin), first)
    assert checkouts.install(0, tree, env) == "installed with pnpm"
    assert (tree / "node_modules" / ".bin" / "nx").exists()
    assert any((tmp_path / "agent" / "pnpm-store").iterdir()), "the agent's shared store is used"
    (tree / "stray-output.txt").write_text("left by a task")
    assert checkouts.checkout(0, str(origin), first) == tree
    assert not (tree / "stray-output.txt").exists(), "each task starts from the commit, outputs cleaned"
    assert checkouts.install(0, tree, env) == "dependencies unchanged"

    other = checkouts.checkout(1, str(origin), first)
    assert other != tree and checkouts.install(1, other, env) == "installed with pnpm", "slots do not share a tree"

    lock = (work / "pnpm-lock.yaml").read_text()
    (work / "pnpm-lock.yaml").write_text(lock.replace("excludeLinksFromLockfile: false", "excludeLinksFromLockfile: false\n"))
    second = commit_all(work, "lockfile touched")
    tree = checkouts.checkout(0, str(origin), second)
    assert checkouts.install(0, tree, env) == "installed with pnpm", "a changed lockfile installs again"

    with pytest.raises(CheckoutError, match="is not on"):
        checkouts.checkout(0, str(origin), "0" * 40)
