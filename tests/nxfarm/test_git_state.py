"""Preflight on real git repositories: dirty trees and unpushed commits are refused with one clear line."""

import subprocess

import pytest

from nxfarm.probe.git import read_git_state


def git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path):
    origin, work = tmp_path / "origin.git", tmp_path / "work"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(work)], check=True, capture_output=True)
    git(work, "config", "user.email", "dev@example.com")
    git(work, "config", "user.name", "Dev")
    (work / "a.txt").write_text("a\n")
    git(work, "add", "a.txt")
    git(work, "commit", "-q", "-m", "first")
    git(work, "push", "-q", "origin", "HEAD:main")
    return work


def test_clean_pushed_commit_may_be_distributed(repo):
    state = read_git_state(repo)
    assert state.remote == "origin/main" and state.dirty_paths == ()
    assert state.refusal("origin") is None


def test_uncommitted_and_untracked_changes_are_refused(repo):
    (repo / "a.txt").write_text("changed\n")
    (repo / "new.txt").write_text("untracked\n")
    refusal = read_git_state(repo).refusal("origin")
    assert refusal.startswith("the working tree has uncommitted changes (2: ")
    assert "a.txt" in refusal and "new.txt" in refusal and "--local" in refusal


def test_an_unpushed_commit_is_refused_naming_commit_and_remote(repo):
    (repo / "b.txt").write_text("b\n")
    git(repo, "add", "b.txt")
    git(repo, "commit", "-q", "-m", "second")
    state = read_git_state(repo)
    assert state.remote is None
    assert state.refusal("origin") == (f"commit {state.commit[:12]} is not on remote 'origin', so agents cannot "
                                       "fetch it: git push origin, or build with --local")
    git(repo, "push", "-q", "origin", "HEAD:main")
    assert read_git_state(repo).refusal("origin") is None
