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
    checkouts.fetch(str(origin), first)
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
    checkouts.fetch(str(origin), second)
    tree = checkouts.checkout(0, str(origin), second)
    assert checkouts.install(0, tree, env) == "installed with pnpm", "a changed lockfile installs again"

    with pytest.raises(CheckoutError, match="is not on"):
        checkouts.fetch(str(origin), "0" * 40)


def _repo_with_branches(tmp_path: Path, content: str = "a\n") -> tuple[Path, str, str]:
    """An origin whose default branch is main, with one commit only on pr-1."""
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    subprocess.run(["git", "init", "--quiet", "--bare", "-b", "main", str(origin)], check=True)
    work.mkdir()
    git(work, "init", "--quiet", "-b", "main")
    git(work, "remote", "add", "origin", str(origin))
    (work / "a.txt").write_text(content)
    trusted = commit_all(work, "on main")
    git(work, "checkout", "--quiet", "-b", "pr-1")
    (work / "a.txt").write_text("changed by a pull request\n")
    git(work, "commit", "--quiet", "-am", "pr")
    git(work, "push", "--quiet", "origin", "pr-1")
    return origin, trusted, git(work, "rev-parse", "HEAD").strip()


def test_a_commit_is_trusted_only_when_a_protected_branch_reaches_it(tmp_path):
    from nxfarm.agent.trust import BRANCH, TRUSTED, TrustPolicy

    origin, on_main, on_pr = _repo_with_branches(tmp_path)
    checkouts = Checkouts(tmp_path / "agent", slots=1)
    default = TrustPolicy((str(origin),))
    for commit in (on_main, on_pr):
        checkouts.fetch(str(origin), commit)
    assert checkouts.tier(default, str(origin), on_main) == TRUSTED, "the default branch (origin HEAD) is protected"
    assert checkouts.tier(default, str(origin), on_pr) == BRANCH
    assert checkouts.tier(TrustPolicy((str(origin),), ("pr-*",)), str(origin), on_pr) == TRUSTED
    assert checkouts.tier(TrustPolicy((str(origin),), ("release/*",)), str(origin), on_main) == BRANCH
    # Another repository's main says nothing about this one.
    other, other_main, _ = _repo_with_branches(tmp_path / "other", "another repository\n")
    assert other_main != on_main
    checkouts.fetch(str(other), other_main)
    assert checkouts.tier(default, str(origin), other_main) == BRANCH


def test_a_slot_is_wiped_when_the_trust_of_what_it_builds_changes(tmp_path):
    origin, on_main, on_pr = _repo_with_branches(tmp_path)
    checkouts = Checkouts(tmp_path / "agent", slots=1)
    checkouts.fetch(str(origin), on_pr)
    tree = checkouts.checkout(0, str(origin), on_pr, "branch pr-1")
    for planted in (tree / "node_modules" / ".bin" / "nx", tree / ".nx" / "cache" / "123" / "out"):
        planted.parent.mkdir(parents=True)
        planted.write_text("planted by a pull request")
    (tmp_path / "agent" / "slots" / "0.lock").write_text("stamp")
    assert checkouts.checkout(0, str(origin), on_pr, "branch pr-1") == tree
    assert (tree / "node_modules" / ".bin" / "nx").exists(), "same trust: installed dependencies are kept"
    checkouts.fetch(str(origin), on_main)
    tree = checkouts.checkout(0, str(origin), on_main, "trusted trusted")
    assert not (tree / "node_modules").exists() and not (tree / ".nx").exists()
    assert not (tmp_path / "agent" / "slots" / "0.lock").exists(), "the next install starts from scratch"
    assert (tree / "a.txt").read_text() == "a\n"
    (tree / "node_modules").mkdir()
    checkouts.checkout(0, str(origin), on_pr, "branch pr-2")
    assert not (tree / "node_modules").exists(), "another untrusted namespace is another trust level"


def test_repository_urls_and_commits_never_reach_git_as_options(tmp_path):
    from nxfarm.agent.trust import TrustPolicy

    marker = tmp_path / "ran"
    checkouts = Checkouts(tmp_path / "agent", slots=1)
    with pytest.raises(CheckoutError):
        checkouts.fetch(f"--upload-pack=touch {marker}", "a" * 40)
    assert not marker.exists()
    assert "not one this farm builds" in TrustPolicy(("*",)).refusal("--upload-pack=x")
    assert "fetches from no repository" in TrustPolicy(()).refusal("https://git.example/r.git")
    assert TrustPolicy(("https://git.example/team/*",)).refusal("https://git.example/team/app.git") is None
    assert "not one this farm builds" in TrustPolicy(("https://git.example/team/*",)).refusal("https://evil.example/x")
