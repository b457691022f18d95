"""Throwaway Debian hosts with real systemd (PID 1) and real sshd, as systemd-nspawn containers.

Recipe measured in research/testhosts.md: one debootstrapped base per Debian release (Debian 12
"bookworm" with Python 3.11, Debian 13 "trixie" with Python 3.13; built once, cached in
`$NXFARM_TESTHOSTS_DIR`, default /var/cache/nx-farm-testhosts), an overlayfs per host, a
private bridge 10.231.0.1/24 with no route off this machine, and
`systemd-nspawn --boot --register=no --keep-unit` (this machine's PID 1 is not systemd).
Needs root. Everything a host leaves (mounts, cgroups, links, processes) is removed by `stop`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT_DIR = Path(os.environ.get("NXFARM_TESTHOSTS_DIR", "/var/cache/nx-farm-testhosts"))
BASE = ROOT_DIR / "base"  # bookworm; other releases get base-<suite>
SUITES = ("bookworm", "trixie")
KEY = ROOT_DIR / "id_ed25519"
BRIDGE = "nxfthbr0"
BRIDGE_IP = "10.231.0.1"
PACKAGES = ("systemd,systemd-sysv,dbus,openssh-server,python3,python3-venv,iproute2,libpam-systemd,"
            "dbus-user-session,sudo,procps,git")  # git: agents fetch and check out what they build
CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"))


class TestHostsUnavailable(Exception):
    """This machine cannot run test hosts (the message says why)."""


def _run(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def _debian_mirror() -> str:
    for source in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for line in source.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    raise TestHostsUnavailable("no Debian mirror in /etc/apt/sources.list.d to debootstrap from")


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise TestHostsUnavailable("test hosts need root (systemd-nspawn, mounts, a bridge)")
    missing = [tool for tool in ("systemd-nspawn", "debootstrap") if shutil.which(tool) is None]
    if missing:
        _run("apt-get", "install", "-y", "debootstrap", "systemd-container", check=False)
        missing = [tool for tool in ("systemd-nspawn", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise TestHostsUnavailable(f"missing {', '.join(missing)} (apt-get install debootstrap systemd-container)")


def base_dir(suite: str = "bookworm") -> Path:
    return BASE if suite == "bookworm" else ROOT_DIR / f"base-{suite}"


def ensure_base(suite: str = "bookworm") -> None:
    """Build the shared base image of a release once; later runs reuse it (the `.complete` marker)."""
    base = base_dir(suite)
    if (base / ".complete").exists() and (base / ".complete").read_text() == f"{PACKAGES}\n":
        return
    ROOT_DIR.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(base, ignore_errors=True)
    if not KEY.exists():
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "nx-farm-testhosts", "-f", str(KEY))
    result = _run("debootstrap", "--variant=minbase", f"--include={PACKAGES}", suite, str(base),
                  _debian_mirror(), check=False)
    if result.returncode != 0:
        raise TestHostsUnavailable(f"debootstrap {suite} failed: {result.stderr.strip().splitlines()[-1:]}")
    (base / "etc" / "machine-id").write_text("")
    for key in (base / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (base / "etc" / "ssh" / "sshd_config.d" / "10-testhost.conf").write_text(
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n")
    ssh_dir = base / "root" / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    (ssh_dir / "authorized_keys").write_text(KEY.with_suffix(".pub").read_text())
    os.chmod(ssh_dir / "authorized_keys", 0o600)
    _run("chroot", str(base), "systemctl", "enable", "systemd-networkd")
    _run("chroot", str(base), "systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
         check=False)
    _run("chroot", str(base), "apt-get", "clean")
    (base / ".complete").write_text(f"{PACKAGES}\n")  # a changed package list builds the base again


def _ensure_bridge() -> None:
    if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        return
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{BRIDGE_IP}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")


@dataclass
class TestHost:
    __test__ = False  # not a test class, whatever pytest thinks of the name
    name: str
    ip: str
    state: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def known_hosts(self) -> Path:
        return self.state / "known_hosts"

    @property
    def host_key(self) -> str:
        """The pinned host key line (`ssh-ed25519 AAAA...`), as the stack config takes it."""
        return " ".join(self.known_hosts.read_text().split()[1:3])

    def ssh(self, command: str, *, stdin: str | bytes | None = None, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        args = ["ssh", "-i", str(KEY), "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", "-o", "ConnectTimeout=5", f"root@{self.ip}", command]
        text = not isinstance(stdin, bytes)
        result = subprocess.run(args, input=stdin, capture_output=True, text=text, timeout=timeout)
        if check and result.returncode != 0:
            err = result.stderr if text else result.stderr.decode(errors="replace")
            raise AssertionError(f"{self.name}: `{command[:200]}` exited {result.returncode}: {err[-2000:]}")
        return result

    def copy(self, local: Path, remote: str) -> None:
        subprocess.run(["scp", "-q", "-r", "-i", str(KEY), "-o", f"UserKnownHostsFile={self.known_hosts}",
                        "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", str(local), f"root@{self.ip}:{remote}"],
                       check=True, capture_output=True)


def start(name: str, ip: str, suite: str = "bookworm") -> TestHost:
    """Boot one host of a Debian release and wait until systemd is up and sshd answers with the pinned key."""
    _ensure_bridge()
    state = ROOT_DIR / "hosts" / name
    stop(TestHost(name, ip, state))  # leftovers of a crashed run
    for part in ("upper", "work", "root"):
        (state / part).mkdir(parents=True, exist_ok=True)
    _run("mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base_dir(suite)},upperdir={state / 'upper'},workdir={state / 'work'}", str(state / "root"))
    root = state / "root"
    (root / "etc" / "hostname").write_text(name + "\n")
    (root / "etc" / "systemd" / "network" / "10-host0.network").write_text(
        f"[Match]\nName=host0\n\n[Network]\nAddress={ip}/24\n")
    key = root / "etc" / "ssh" / "ssh_host_ed25519_key"
    _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(key))
    (state / "known_hosts").write_text(f"{ip} {' '.join(key.with_suffix('.pub').read_text().split()[:2])}\n")
    cgroups = [base / "nxfarm-testhosts" / name for base in CGROUP_ROOTS if base.exists()]
    for cgroup in cgroups:
        cgroup.mkdir(parents=True, exist_ok=True)
    # nspawn --keep-unit puts its cgroups inside the caller's: give each host its own.
    enter = "; ".join(f"echo $$ > {c}/cgroup.procs" for c in cgroups)
    log = open(state / "console.log", "wb")
    proc = subprocess.Popen(
        ["sh", "-c", f'{enter}; exec systemd-nspawn --boot --register=no --keep-unit --quiet '
                     f'--network-bridge={BRIDGE} -M {name} -D {root}'],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    host = TestHost(name, ip, state, proc)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TestHostsUnavailable(f"{name} exited at boot: {(state / 'console.log').read_text()[-1500:]}")
        result = host.ssh("systemctl is-system-running", check=False, timeout=10)
        if result.stdout.strip() in ("running", "degraded"):
            return host
        time.sleep(0.2)
    console = (state / "console.log").read_text(errors="replace")[-1500:]
    last = host.ssh("true", check=False, timeout=10).stderr.strip()
    stop(host)
    raise TestHostsUnavailable(f"{name} did not come up within 60 s (ssh: {last}); console: {console}")


def stop(host: TestHost) -> None:
    """Power the host off and remove everything it left; idempotent."""
    if host.proc is not None and host.proc.poll() is None:
        host.proc.send_signal(signal.SIGTERM)  # nspawn asks the guest to power off
        try:
            host.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(host.proc.pid, signal.SIGKILL)
            host.proc.wait(10)
    for base in CGROUP_ROOTS:
        cgroup = base / "nxfarm-testhosts" / host.name
        if not cgroup.exists():
            continue
        for _ in range(50):  # processes of a guest that outlived its nspawn (crash recovery)
            pids = [int(p) for f in cgroup.rglob("cgroup.procs") for p in f.read_text().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        for directory in sorted((p for p in cgroup.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            directory.rmdir()
        cgroup.rmdir()
    root = host.state / "root"
    if os.path.ismount(root):
        _run("umount", str(root), check=False)
    shutil.rmtree(host.state, ignore_errors=True)


def remove_bridge() -> None:
    _run("ip", "link", "del", BRIDGE, check=False)
