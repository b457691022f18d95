"""One checkout per task slot, so concurrent tasks never share an output directory.

Layout under the agent's workspace directory:
  repo.git/            bare mirror, fetched by the agent from the URL each task names (one fetch at
                       a time); each repository's branches under refs/farm/<digest of its URL>/heads/
  slots/<n>/           everything slot n's builds may write, owned by its build user (sandbox.py):
    tree/              a repository borrowing the mirror's objects (alternates), at the task's commit
    home/              HOME of its commands (npm's cache, tool configs)
    pnpm-store/        the slot's own pnpm store
  slots/<n>.lock       digest of the lockfile that slot's node_modules was installed from
  slots/<n>.tier       the trust tier and cache namespace the slot last built for: when the next
                       task's differ, slots/<n>/ is emptied first, so nothing a pull request left
                       (node_modules, .nx, untracked files, caches in home) reaches a trusted build

Every command on a slot runs as its build user (when the agent has them); the agent itself only
fetches into the mirror, which build users may read and not write. Repository URLs and commits
reach git after `--` and only once checked (an allowed URL, a full hex commit id).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from .sandbox import BuildUser, as_user
from .trust import BRANCH, TRUSTED, TrustPolicy, default_branch, repo_refs

LOCKFILES = (("pnpm-lock.yaml", "pnpm"), ("package-lock.json", "npm"))
# Kept across tasks of one trust level: installed dependencies and Nx's own cache and workspace data.
KEEP: tuple[str, ...] = ("node_modules", ".nx")


class CheckoutError(RuntimeError):
    """A step failed; the message says which and ends with the tool's last words."""


def _run(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 1800,
         user: BuildUser | None = None) -> str:
    result = subprocess.run(as_user(args, user), cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
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
    slot's own store, or npm), or None when it has no lockfile."""
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
    def __init__(self, root: Path, slots: int, users: list[BuildUser] | None = None) -> None:
        """`users`: one build user per slot, or None to run everything as this process's user."""
        if users is not None and len(users) != slots:
            raise ValueError(f"{slots} slot(s) need {slots} build user(s), got {len(users)}")
        self.root = root
        self.mirror = root / "repo.git"
        self.slots_dir = root / "slots"
        self.users = users
        self._mirror_lock = threading.Lock()
        self._free = list(range(slots))
        self._free_lock = threading.Condition()

    def acquire(self) -> int:
        with self._free_lock:
            self._free_lock.wait_for(lambda: bool(self._free))
            return self._free.pop(0)

    def user(self, slot: int) -> BuildUser | None:
        return self.users[slot] if self.users else None

    def area(self, slot: int) -> Path:
        return self.slots_dir / str(slot)

    def env(self, slot: int, base: dict[str, str]) -> dict[str, str]:
        """`base` with HOME and npm's cache inside the slot (wiped with it) when the slot has a
        build user; a local farm keeps this machine's caches."""
        if self.user(slot) is None:
            return base
        home = self.area(slot) / "home"
        return {**base, "HOME": str(home), "npm_config_cache": str(home / ".npm"),
                "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config")}

    def store(self, slot: int) -> Path:
        """pnpm's store: the slot's own with a build user, else one for the whole agent."""
        return self.area(slot) / "pnpm-store" if self.user(slot) is not None else self.root / "pnpm-store"

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
        fetched (call after `fetch`), else BRANCH."""
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
        """The slot's tree at exactly `commit` (call `fetch` first), with everything but KEEP reset to
        it; when `trust` (tier and namespace) differs from the slot's last, the whole slot is
        emptied first."""
        area, user = self.area(slot), self.user(slot)
        tree = area / "tree"
        stamp = self.slots_dir / f"{slot}.tier"
        self.slots_dir.mkdir(parents=True, exist_ok=True)
        if user is None:
            area.mkdir(exist_ok=True)
        elif not area.is_dir():
            raise CheckoutError(f"{area} is missing: the agent's install creates it for {user.name}; run `pulumi up`")
        if not stamp.is_file() or stamp.read_text() != trust:
            (self.slots_dir / f"{slot}.lock").unlink(missing_ok=True)
            stamp.unlink(missing_ok=True)
            _run(["find", str(area), "-mindepth", "1", "-delete"], user=user)
        env = self.env(slot, {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/"),
                              "GIT_TERMINAL_PROMPT": "0"})
        if not (tree / ".git").exists():
            _run(["mkdir", "-p", str(area / "home"), str(area / "pnpm-store")], user=user)
            _run(["git", "init", "--quiet", str(tree)], env=env, user=user)
            # The tree borrows the mirror's objects instead of copying them (read-only to it).
            _run(["sh", "-c", 'printf "%s\\n" "$1" > "$2"', "sh", str(self.mirror.resolve() / "objects"),
                  str(tree / ".git" / "objects" / "info" / "alternates")], user=user)
        _run(["git", "-C", str(tree), "checkout", "--quiet", "--force", "--detach", commit], env=env, user=user)
        excludes = [arg for name in KEEP for arg in ("-e", name)]
        _run(["git", "-C", str(tree), "clean", "-ffdxq", *excludes], env=env, user=user)
        tmp = stamp.with_suffix(".tier-tmp")
        tmp.write_text(trust)
        os.replace(tmp, stamp)
        return tree

    def install(self, slot: int, workspace: Path, env: dict[str, str]) -> str:
        """Install dependencies when the lockfile differs from the one this slot last installed."""
        stamp = self.slots_dir / f"{slot}.lock"
        digest = lockfile_digest(workspace)
        command = install_command(workspace, self.store(slot))
        if digest is None or command is None:
            return "no lockfile"
        if stamp.is_file() and stamp.read_text() == digest and (workspace / "node_modules").is_dir():
            return "dependencies unchanged"
        stamp.unlink(missing_ok=True)
        _run(list(command.args), cwd=workspace, env=self.env(slot, env), user=self.user(slot))
        tmp = stamp.with_suffix(".tmp")
        tmp.write_text(digest)
        os.replace(tmp, stamp)
        return f"installed with {command.manager}"
