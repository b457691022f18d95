"""One checkout per task slot, so concurrent tasks never share an output directory.

Layout under the agent's workspace directory:
  repo.git/        bare mirror, fetched from the URL each task names (one fetch at a time);
                   each repository's branches under refs/farm/<digest of its URL>/heads/
  slots/<n>/       a detached git worktree of repo.git per slot
  slots/<n>.lock   digest of the lockfile that slot's node_modules was installed from
  slots/<n>.tier   the trust tier and cache namespace the slot last built for: when the next
                   task's differ, everything the last build left (node_modules, .nx, untracked
                   files) is wiped first, so nothing a pull request planted reaches a trusted build

Repository URLs and commits reach git after `--` and only once checked (an allowed URL, a full
hex commit id), so neither can be read as an option.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from .trust import BRANCH, TRUSTED, TrustPolicy, default_branch, repo_refs

LOCKFILES = (("pnpm-lock.yaml", "pnpm"), ("package-lock.json", "npm"))
# Kept across tasks: installed dependencies and Nx's own cache and workspace data.
KEEP = ("node_modules", ".nx")


class CheckoutError(RuntimeError):
    """A step failed; the message says which and ends with the tool's last words."""


def _run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 1800) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise CheckoutError(f"{' '.join(args[:4])} failed ({result.returncode}): " + " | ".join(tail))
    return result.stdout


@dataclass(frozen=True)
class InstallCommand:
    manager: str
    args: tuple[str, ...]


def install_command(workspace: Path, store_dir: Path) -> InstallCommand | None:
    """How to install this workspace's dependencies exactly from its lockfile (pnpm with the
    agent's shared store, or npm), or None when it has no lockfile."""
    for lockfile, manager in LOCKFILES:
        if (workspace / lockfile).is_file():
            if manager == "pnpm":
                return InstallCommand("pnpm", ("pnpm", "install", "--frozen-lockfile", "--store-dir", str(store_dir)))
            return InstallCommand("npm", ("npm", "ci", "--no-audit", "--no-fund", "--prefer-offline"))
    return None


def lockfile_digest(workspace: Path) -> str | None:
    for lockfile, _ in LOCKFILES:
        path = workspace / lockfile
        if path.is_file():
            return f"{lockfile}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    return None


class Checkouts:
    def __init__(self, root: Path, slots: int) -> None:
        self.root = root
        self.mirror = root / "repo.git"
        self.slots_dir = root / "slots"
        self.store_dir = root / "pnpm-store"
        self._mirror_lock = threading.Lock()
        self._free = list(range(slots))
        self._free_lock = threading.Condition()

    def acquire(self) -> int:
        with self._free_lock:
            self._free_lock.wait_for(lambda: bool(self._free))
            return self._free.pop(0)

    def release(self, slot: int) -> None:
        with self._free_lock:
            self._free.append(slot)
            self._free.sort()
            self._free_lock.notify()

    def fetch(self, repo_url: str, commit: str) -> None:
        """Fetch the repository's branches (always: the protected branches must be current to
        decide trust), then the commit itself if no branch has it."""
        with self._mirror_lock:
            if not (self.mirror / "HEAD").exists():
                self.root.mkdir(parents=True, exist_ok=True)
                _run(["git", "init", "--quiet", "--bare", str(self.mirror)])
            refs = repo_refs(repo_url)
            # Branch heads first (works with every server), then the commit by id (needs the
            # server to allow it, e.g. protocol v2 or uploadpack.allowReachableSHA1InWant).
            _run(["git", "-C", str(self.mirror), "fetch", "--quiet", "--force", "--prune", "--", repo_url,
                  f"+refs/heads/*:{refs}/heads/*"], timeout=600)
            if not self._has(commit):
                try:
                    _run(["git", "-C", str(self.mirror), "fetch", "--quiet", "--", repo_url, commit], timeout=600)
                except CheckoutError:
                    pass
            if not self._has(commit):
                raise CheckoutError(f"commit {commit[:12]} is not on {repo_url}: push it first")

    def _has(self, commit: str) -> bool:
        return subprocess.run(["git", "-C", str(self.mirror), "cat-file", "-e", f"{commit}^{{commit}}"],
                              capture_output=True).returncode == 0

    def tier(self, policy: TrustPolicy, repo_url: str, commit: str) -> str:
        """TRUSTED when `commit` is reachable from a protected branch of `repo_url` as last
        fetched (call after `checkout`), else BRANCH."""
        refs = repo_refs(repo_url)
        listed = _run(["git", "-C", str(self.mirror), "for-each-ref", "--format=%(refname)", f"{refs}/heads/"])
        branches = [ref[len(f"{refs}/heads/"):] for ref in listed.split()]
        default = None
        if not policy.protected:
            default = default_branch(_run(["git", "ls-remote", "--symref", "--", repo_url, "HEAD"], timeout=120))
        for branch in branches:
            if policy.protects(branch, default):
                ancestor = subprocess.run(["git", "-C", str(self.mirror), "merge-base", "--is-ancestor", commit,
                                           f"{refs}/heads/{branch}"], capture_output=True)
                if ancestor.returncode == 0:
                    return TRUSTED
        return BRANCH

    def checkout(self, slot: int, repo_url: str, commit: str, trust: str = "") -> Path:
        """The slot's worktree at exactly `commit`, with everything but KEEP reset to it; when
        `trust` (tier and namespace) differs from the slot's last, KEEP is wiped too."""
        tree = self.slots_dir / str(slot)
        stamp = self.slots_dir / f"{slot}.tier"
        keep = KEEP
        if (tree / ".git").exists() and (not stamp.is_file() or stamp.read_text() != trust):
            keep = ()
            (self.slots_dir / f"{slot}.lock").unlink(missing_ok=True)
            for name in KEEP:
                shutil.rmtree(tree / name, ignore_errors=True)
        if not (tree / ".git").exists():
            self.slots_dir.mkdir(parents=True, exist_ok=True)
            with self._mirror_lock:  # worktree bookkeeping lives in the mirror
                _run(["git", "-C", str(self.mirror), "worktree", "prune"])
                _run(["git", "-C", str(self.mirror), "worktree", "add", "--force", "--detach", str(tree), commit])
        else:
            _run(["git", "-C", str(tree), "checkout", "--quiet", "--force", "--detach", commit])
        excludes = [arg for name in keep for arg in ("-e", name)]
        _run(["git", "-C", str(tree), "clean", "-ffdxq", *excludes])
        tmp = stamp.with_suffix(".tier-tmp")
        tmp.write_text(trust)
        os.replace(tmp, stamp)
        return tree

    def install(self, slot: int, workspace: Path, env: dict[str, str]) -> str:
        """Install dependencies when the lockfile differs from the one this slot last installed."""
        stamp = self.slots_dir / f"{slot}.lock"
        digest = lockfile_digest(workspace)
        command = install_command(workspace, self.store_dir)
        if digest is None or command is None:
            return "no lockfile"
        if stamp.is_file() and stamp.read_text() == digest and (workspace / "node_modules").is_dir():
            return "dependencies unchanged"
        stamp.unlink(missing_ok=True)
        _run(list(command.args), cwd=workspace, env=env)
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(digest)
        os.replace(tmp, stamp)
        return f"installed with {command.manager}"
