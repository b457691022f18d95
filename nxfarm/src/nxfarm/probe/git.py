"""Can agents build exactly this tree? They check out a commit, so the tree must be clean and the
commit must already be on a remote they fetch from."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GitState:
    commit: str
    dirty_paths: tuple[str, ...]
    remote: str | None  # a remote-tracking branch holding the commit, e.g. "origin/main"

    def refusal(self, remote_name: str, need_remote: bool = True) -> str | None:
        """Why this tree cannot be distributed, in one line, or None. Agents that fetch from the
        repository itself (a local farm) need no remote."""
        short = self.commit[:12]
        if self.dirty_paths:
            shown = ", ".join(self.dirty_paths[:3]) + (" ..." if len(self.dirty_paths) > 3 else "")
            return (f"the working tree has uncommitted changes ({len(self.dirty_paths)}: {shown}); agents build "
                    f"commit {short} only: commit{' and push' if need_remote else ''}, or build with --local")
        if self.remote is None and need_remote:
            return (f"commit {short} is not on remote '{remote_name}', so agents cannot fetch it: "
                    f"git push {remote_name}, or build with --local")
        return None


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def read_git_state(repo: Path, remote_name: str = "origin") -> GitState:
    try:
        commit = _git(repo, "rev-parse", "--verify", "--quiet", "HEAD^{commit}").strip()
    except RuntimeError:
        raise RuntimeError(f"{repo} has no commit yet, and agents build commits: commit your work, "
                           "or build here with --local") from None
    # Untracked files count: Nx hashes them as inputs, and agents will not have them.
    dirty = tuple(line[3:] for line in _git(repo, "status", "--porcelain").splitlines() if line)
    holders = [ref.strip() for ref in _git(repo, "branch", "-r", "--contains", commit).splitlines()]
    on_remote = sorted(ref for ref in holders if ref.startswith(f"{remote_name}/") and "->" not in ref)
    return GitState(commit, dirty, on_remote[0] if on_remote else None)
