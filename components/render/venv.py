"""Shell snippets shared by the hosts' install scripts."""

from __future__ import annotations

import shlex


# Every account the farm makes is made under this lock: the engine runs independent steps at once,
# and two useradd at once (even of different names) can leave /etc/passwd with one name twice and
# /etc/group with a gid reused (seen on a test host: the service then could not read its files).
USERS_LOCK = "/run/nx-farm-users.lock"


def useradd(args: str) -> str:
    """`useradd <args>` serialised with every other account the farm makes on the host."""
    return f"flock {USERS_LOCK} useradd {args}"


def ensure_system_user(user: str) -> str:
    """Make the service account unless it exists; the check and the making under one lock."""
    make = f"id -u {user} >/dev/null 2>&1 || useradd --system --home-dir /nonexistent --shell /usr/sbin/nologin {user}"
    return f"flock {USERS_LOCK} sh -c {shlex.quote(make)}"


def venv_from_wheels(root: str, wheels_dir: str, package: str) -> str:
    """Install `package` into `<root>/venv` from the shipped wheels only (no package index on the host).

    Each wheel set gets its own `venv-<digest>`, switched in by an atomic symlink rename, so a
    half-built venv is never live; sets `changed=1` when the live venv changed.
    """
    q = shlex.quote
    return f"""install -d -m 0755 {root}
digest=$(cat {q(wheels_dir)}/*.whl | sha256sum | cut -c1-16)
venv={root}/venv-$digest
if [ ! -e "$venv/.complete" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-index --find-links {q(wheels_dir)} {package}
  touch "$venv/.complete"
fi
if [ "$(readlink {root}/venv 2>/dev/null)" != "venv-$digest" ]; then
  ln -sfn "venv-$digest" {root}/venv.next && mv -T {root}/venv.next {root}/venv
  changed=1
fi
for old in {root}/venv-*; do [ "$old" = "$venv" ] || rm -rf "$old"; done"""


def unit_from_stdin(unit: str) -> str:
    """Install the unit read on stdin if it differs (sets `changed=1`), enable it, and restart it
    when anything changed (`changed` may already be 1 from the venv), else just start it."""
    return f"""unit=/etc/systemd/system/{unit}
new_unit=$(mktemp)
cat > "$new_unit"
if ! cmp -s "$new_unit" "$unit"; then
  install -m 0644 "$new_unit" "$unit"
  systemctl daemon-reload
  changed=1
fi
rm -f "$new_unit"
systemctl enable --quiet {unit}
if [ "$changed" = 1 ]; then systemctl restart {unit}; else systemctl start {unit}; fi"""
