"""Build commands as the slot's own unprivileged user, holding none of the agent's secrets.

A deployed agent runs as the farm's service user with two capabilities only (CAP_SETUID,
CAP_SETGID, ambient; components/render/agent.py) and starts every command of a slot (git
checkout, install, `nx run`) through `setpriv` as that slot's build user (`nxbuild<n>`):
another uid, so it cannot read the agent's /proc/<pid>/environ (its TLS key and tokens), the
age key (0600 root) or another slot; no supplementary groups; inheritable and ambient
capabilities cleared and no-new-privs, so nothing it starts regains a capability. What it
receives is the environment `task.nx_env` builds: the cache token of its own tier only.

Without build users (a local farm on your own machine) commands run as the agent's user.
"""

from __future__ import annotations

import pwd
import shutil
from dataclasses import dataclass

BUILD_USER_PREFIX = "nxbuild"


class SandboxError(RuntimeError):
    """A build user is missing or setpriv is not installed (message says which)."""


@dataclass(frozen=True)
class BuildUser:
    name: str
    uid: int
    gid: int


def build_user_name(slot: int) -> str:
    return f"{BUILD_USER_PREFIX}{slot}"


def lookup(names: list[str]) -> list[BuildUser]:
    users = []
    for name in names:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise SandboxError(f"build user {name!r} does not exist: the agent's install creates nxbuild0.. "
                               "(one per slot); run `pulumi up` after changing taskSlots") from None
        if entry.pw_uid == 0:
            raise SandboxError(f"build user {name!r} is root: tasks would hold every secret of the host")
        users.append(BuildUser(name, entry.pw_uid, entry.pw_gid))
    if users and shutil.which("setpriv") is None:
        raise SandboxError("setpriv (util-linux) is not installed: it starts tasks as their build user")
    return users


def as_user(argv: list[str], user: BuildUser | None) -> list[str]:
    """`argv`, run as `user` with no capabilities and no way to gain one (None: unchanged)."""
    if user is None:
        return argv
    return ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups", "--inh-caps=-all",
            "--ambient-caps=-all", "--no-new-privs", "--", *argv]
