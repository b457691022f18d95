"""Shell snippets every farm host gets: the preflight check, and the owner mark that keeps a
renamed component's removal off the host its new name now runs."""

from __future__ import annotations

import shlex

from ..settings import SshTarget

OWNER_DIR = "/etc/nx-farm"


def preflight_script(target: SshTarget, where: str) -> str:
    """Read-only: fail with one line naming the fix if the host lacks what the deploy needs, or is
    not the Python and CPU the stack says (the wheels shipped to it are built for those)."""
    w = shlex.quote(where)
    return f"""set -eu
fail() {{ echo {w}": $*" >&2; exit 1; }}
command -v systemctl >/dev/null 2>&1 || fail "systemd is required (systemctl not found)"
command -v python3 >/dev/null 2>&1 || fail "python3 is missing: apt install python3 python3-venv"
python3 -c 'import ensurepip, venv' 2>/dev/null || fail "python3-venv is missing: apt install python3-venv"
have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$have" = {target.python} ] || fail "python3 here is $have but the stack says python: '{target.python}': set python: '$have'"
arch=$(uname -m)
[ "$arch" = {target.arch} ] || fail "this host is $arch but the stack says arch: {target.arch}: set arch: $arch"
if command -v sshd >/dev/null 2>&1 && sshd -T >/dev/null 2>&1 && ! sshd -T 2>/dev/null | grep -qi '^subsystem sftp'; then
  fail "sshd has no sftp subsystem (the deploy copies files over SFTP): add 'Subsystem sftp internal-sftp' to sshd_config"
fi
echo "ok: python $have, $arch"
"""


def claim(marker: str, owner: str) -> str:
    """Record which component (by stack name) owns this host's install of a role."""
    return f"install -d -m 0755 {OWNER_DIR} && echo {shlex.quote(owner)} > {OWNER_DIR}/{marker}"


def if_owned(marker: str, owner: str, command: str) -> str:
    """Run a removal only while `owner` still owns the host's install: after a rename the new name
    installs (and claims) first, and the old name's delete, which runs after, leaves it alone."""
    path = f"{OWNER_DIR}/{marker}"
    return (f"owner=$(cat {path} 2>/dev/null || true); "
            f"if [ -z \"$owner\" ] || [ \"$owner\" = {shlex.quote(owner)} ]; then {command}; "
            f"else echo \"left in place: this host's {marker} now belongs to $owner\"; fi")
