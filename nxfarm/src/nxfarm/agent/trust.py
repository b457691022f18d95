"""What an agent trusts: which repositories it fetches from, and which commits are trusted.

The agent decides a task's tier from what it builds, never from what the orchestrator says:
a commit is trusted when it is reachable from a protected branch (a configured list of branch
patterns, default the repository's default branch) of an allowed repository, as fetched at
that moment. A trusted task writes the cache's trusted namespace with the agent's own token;
any other task writes the orchestrator's namespace (or `untrusted`) with the agent's branch
token, which cannot write the trusted namespace (cache_server/namespaces.py).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
from dataclasses import dataclass

TRUSTED = "trusted"
BRANCH = "branch"
UNTRUSTED_NAMESPACE = "untrusted"  # where an untrusted task goes when the orchestrator names none

ALLOWED_ENV = "NXFARM_ALLOWED_REPOS"
PROTECTED_ENV = "NXFARM_PROTECTED_BRANCHES"
BRANCH_TOKEN_ENV = "NXFARM_CACHE_BRANCH_TOKEN"


@dataclass(frozen=True)
class TrustPolicy:
    repositories: tuple[str, ...]     # repository URLs (fnmatch patterns) this agent fetches from
    protected: tuple[str, ...] = ()   # branch-name patterns; () = the repository's default branch

    @classmethod
    def from_env(cls, environ: dict[str, str] | os._Environ[str], repositories: list[str] | None = None,
                 protected: list[str] | None = None) -> TrustPolicy:
        return cls(tuple(repositories or environ.get(ALLOWED_ENV, "").split()),
                   tuple(protected or environ.get(PROTECTED_ENV, "").split()))

    def allows(self, repo_url: str) -> bool:
        return any(fnmatch.fnmatchcase(repo_url, pattern) for pattern in self.repositories)

    def refusal(self, repo_url: str) -> str | None:
        if not self.repositories:
            return (f"this agent fetches from no repository: list yours in the stack's trust.repositories "
                    f"(or --allow-repo / {ALLOWED_ENV})")
        if repo_url.startswith("-") or not self.allows(repo_url):
            return f"repository {repo_url[:200]!r} is not one this farm builds (trust.repositories)"
        return None

    def protects(self, branch: str, default_branch: str | None) -> bool:
        if not self.protected:
            return branch == default_branch
        return any(fnmatch.fnmatchcase(branch, pattern) for pattern in self.protected)


def repo_refs(repo_url: str) -> str:
    """The mirror's ref namespace for one repository's branches (never shared between URLs)."""
    return f"refs/farm/{hashlib.sha256(repo_url.encode()).hexdigest()[:16]}"


def default_branch(ls_remote_symref: str) -> str | None:
    """The default branch from `git ls-remote --symref URL HEAD` output."""
    for line in ls_remote_symref.splitlines():
        if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
            return line[len("ref: refs/heads/"):-len("\tHEAD")]
    return None


def cache_namespace(tier: str, requested: str) -> str:
    return TRUSTED if tier == TRUSTED else (requested if requested and requested != TRUSTED else UNTRUSTED_NAMESPACE)
