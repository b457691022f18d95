"""What each agent gets: the agent service, the health-monitor timer, and the env file's plaintext.

The env file reaches the agent SOPS-encrypted; the service decrypts it into its own
environment at start (`sops exec-env`), so the plaintext is never at rest on the agent.
The runtime these units start (`nxfarm agent run`, `nxfarm health --heal`) comes from the
distributed-build and health-monitor issues.
"""

from __future__ import annotations

import base64
import shlex

from ..settings import AgentSettings, TrustSettings
from .tailnet_policy import WORKER_PORT
from .venv import useradd, venv_from_wheels

BUILD_USER_PREFIX = "nxbuild"  # as nxfarm/agent/sandbox.py: nxbuild<slot>

AGENT_UNIT = "nx-farm-agent.service"
HEALTH_UNIT = "nx-farm-health.service"
HEALTH_TIMER = "nx-farm-health.timer"
INSTALL_ROOT = "/opt/nx-farm/agent"
ENV_FILE = "/etc/nx-farm/agent.sops.env"
AGE_KEY_FILE = "/etc/nx-farm/agent-age.key"
HEALTH_INTERVAL_S = 60


def tls_values(ca_pem: str, cert_pem: str, key_pem: str) -> dict[str, str]:
    """The cluster's TLS material as single-line `base64:` values (what `nxfarm` reads)."""
    encode = lambda pem: "base64:" + base64.b64encode(pem.encode()).decode()  # noqa: E731
    return {"NXFARM_TLS_CA": encode(ca_pem), "NXFARM_TLS_CERT": encode(cert_pem), "NXFARM_TLS_KEY": encode(key_pem)}


def env_lines(values: dict[str, str]) -> str:
    for key, value in values.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"{key} must be a single line")
    return "".join(f"{key}={value}\n" for key, value in values.items())


def env_file(*, cache_url: str, token: str, branch_token: str, scheduler_address: str, agent: AgentSettings,
             trust: TrustSettings, tls: tuple[str, str, str]) -> str:
    """Plaintext dotenv (encrypt it before it goes anywhere): the cache, this agent's two tokens
    (trusted namespace; any other namespace), the repositories it builds and the branches it
    trusts, the scheduler and this agent's cluster certificate and key. Values are single-line."""
    values = {
        "NX_SELF_HOSTED_REMOTE_CACHE_SERVER": cache_url,
        "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN": token,
        "NXFARM_CACHE_BRANCH_TOKEN": branch_token,
        "NXFARM_ALLOWED_REPOS": " ".join(trust.repositories),
        "NXFARM_PROTECTED_BRANCHES": " ".join(trust.protected_branches),
        "NXFARM_SCHEDULER": scheduler_address,
        "NXFARM_AGENT_NAME": agent.name,
        **tls_values(*tls),
    }
    return env_lines(values)


RUNTIME_DIR = "/run/nx-farm-agent"


def agent_unit(agent: AgentSettings, deploy_user: str, install_root: str = INSTALL_ROOT) -> str:
    """The agent as the service user, hardened like the cache server, the workspace its only
    writable path. Its builds run inside it as the slots' build users (nxfarm/agent/sandbox.py),
    for which it holds CAP_SETUID and CAP_SETGID (and CAP_KILL, to stop their processes) and
    nothing else. Its env file is decrypted by root with the age key (0600 root, which the agent
    cannot read) into a root-only file on tmpfs that systemd reads into the agent's environment
    and that is removed once the agent runs."""
    run = shlex.join([f"{install_root}/venv/bin/nxfarm", "agent", "run", "--slots", str(agent.task_slots),
                      "--workspace", agent.workspace_path, "--bind", agent.host,
                      "--port", str(WORKER_PORT), "--sandbox"])
    decrypt = (f"umask 077 && SOPS_AGE_KEY_FILE={AGE_KEY_FILE} exec {shlex.quote(agent.sops_path)} --decrypt "
               f"--input-type dotenv --output-type dotenv --output {RUNTIME_DIR}/env {ENV_FILE}")
    caps = "CAP_SETUID CAP_SETGID CAP_KILL"
    return f"""[Unit]
Description=nx-farm build agent {agent.name} (Dask worker running Nx tasks)
Wants=network-online.target
After=network-online.target tailscaled.service

[Service]
Type=exec
User={deploy_user}
Group={deploy_user}
RuntimeDirectory=nx-farm-agent
RuntimeDirectoryMode=0700
ExecStartPre=+/bin/sh -c {shlex.quote(decrypt)}
EnvironmentFile=-{RUNTIME_DIR}/env
ExecStart={run}
ExecStartPost=+/bin/rm -f {RUNTIME_DIR}/env
Restart=on-failure
RestartSec=5
WorkingDirectory={agent.workspace_path}
AmbientCapabilities={caps}
CapabilityBoundingSet={caps}
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths={agent.workspace_path}
InaccessiblePaths=-{AGE_KEY_FILE}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
RestrictRealtime=yes
LockPersonality=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
MemoryMax=90%
TasksMax=8192

[Install]
WantedBy=multi-user.target
"""


def health_service(cache_url: str, install_root: str = INSTALL_ROOT) -> str:
    return f"""[Unit]
Description=nx-farm health monitor: check and heal the farm's services

[Service]
Type=oneshot
ExecStart={install_root}/venv/bin/nxfarm health --heal --cache-url {shlex.quote(cache_url)}
"""


def health_timer() -> str:
    return f"""[Unit]
Description=Run the nx-farm health monitor every {HEALTH_INTERVAL_S} s

[Timer]
OnBootSec={HEALTH_INTERVAL_S}s
OnUnitActiveSec={HEALTH_INTERVAL_S}s
AccuracySec=5s
Unit={HEALTH_UNIT}

[Install]
WantedBy=timers.target
"""


def install_script(agent: AgentSettings, deploy_user: str, wheels_dir: str) -> str:
    """Idempotent: service user, workspace, prerequisites checked, runtime venv from the shipped wheels.

    The agent's age identity is made on the agent by the operator (its public half is
    `ageRecipient` in the stack), so it never leaves the machine.
    """
    q = shlex.quote
    slots = f"{agent.workspace_path.rstrip('/')}/slots"
    return f"""set -eu
changed=0
id -u {deploy_user} >/dev/null 2>&1 || {useradd("--system --create-home --home-dir /var/lib/nx-farm/home")} \\
  --shell /usr/sbin/nologin {deploy_user}
for tool in setpriv git; do
  command -v $tool >/dev/null || {{ echo "{agent.name}: $tool is missing (Debian: apt install util-linux git)" >&2; exit 1; }}
done
# The workspace and slots/ let build users through to their own slot; the mirror is readable.
install -d -m 0711 -o {deploy_user} -g {deploy_user} {q(agent.workspace_path)} {q(slots)}
if [ ! -e {q(slots + "/.layout-2")} ]; then
  # Slots were git worktrees of the mirror owned by the service user: start them afresh.
  find {q(slots)} -mindepth 1 -delete
  rm -rf {q(agent.workspace_path + "/repo.git/worktrees")}
  touch {q(slots + "/.layout-2")}
fi
for n in $(seq 0 {agent.task_slots - 1}); do
  id -u {BUILD_USER_PREFIX}$n >/dev/null 2>&1 || {useradd("--system --user-group --no-create-home")} \
    --home-dir {q(slots)}/$n/home --shell /usr/sbin/nologin {BUILD_USER_PREFIX}$n
  install -d -m 2750 -o {BUILD_USER_PREFIX}$n -g {deploy_user} {q(slots)}/$n
done
install -d -m 0755 /etc/nx-farm
if [ ! -x {q(agent.sops_path)} ]; then
  echo "{agent.name}: sops is not at {agent.sops_path}: install sops 3.9+ there, or set agents[].sopsPath" >&2; exit 1
fi
if [ ! -s {AGE_KEY_FILE} ]; then
  echo "{agent.name}: no age identity at {AGE_KEY_FILE}: run 'age-keygen -o {AGE_KEY_FILE}' on the agent" \\
    "and put its public key in agents[].ageRecipient" >&2; exit 1
fi
chown root:root {AGE_KEY_FILE} && chmod 0600 {AGE_KEY_FILE}  # root decrypts at start; builds never see it
{venv_from_wheels(INSTALL_ROOT, wheels_dir, "nxfarm")}
if [ "$changed" = 1 ]; then systemctl try-restart {AGENT_UNIT} || true; echo changed; else echo unchanged; fi
"""
