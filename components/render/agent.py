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
from .venv import venv_from_wheels

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


def agent_unit(agent: AgentSettings, deploy_user: str, install_root: str = INSTALL_ROOT) -> str:
    run = shlex.join([f"{install_root}/venv/bin/nxfarm", "agent", "run", "--slots", str(agent.task_slots),
                      "--workspace", agent.workspace_path, "--bind", agent.host,
                      "--port", str(WORKER_PORT)])
    return f"""[Unit]
Description=nx-farm build agent {agent.name} (Dask worker running Nx tasks)
Wants=network-online.target
After=network-online.target tailscaled.service

[Service]
Type=exec
User={deploy_user}
Environment=SOPS_AGE_KEY_FILE={AGE_KEY_FILE}
# Decrypted into the process environment only; never written to disk in plaintext
ExecStart={agent.sops_path} exec-env {ENV_FILE} {shlex.quote(run)}
Restart=on-failure
RestartSec=5
WorkingDirectory={agent.workspace_path}
NoNewPrivileges=yes
ProtectSystem=full
PrivateTmp=yes

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
    return f"""set -eu
changed=0
id -u {deploy_user} >/dev/null 2>&1 || useradd --system --create-home --home-dir /var/lib/nx-farm/home \\
  --shell /usr/sbin/nologin {deploy_user}
install -d -m 0750 -o {deploy_user} -g {deploy_user} {q(agent.workspace_path)}
install -d -m 0755 /etc/nx-farm
if [ ! -x {q(agent.sops_path)} ]; then
  echo "{agent.name}: sops is not at {agent.sops_path}: install sops 3.9+ there, or set agents[].sopsPath" >&2; exit 1
fi
if [ ! -s {AGE_KEY_FILE} ]; then
  echo "{agent.name}: no age identity at {AGE_KEY_FILE}: run 'age-keygen -o {AGE_KEY_FILE}' on the agent" \\
    "and put its public key in agents[].ageRecipient" >&2; exit 1
fi
chgrp {deploy_user} {AGE_KEY_FILE} && chmod 0640 {AGE_KEY_FILE}
{venv_from_wheels(INSTALL_ROOT, wheels_dir, "nxfarm")}
if [ "$changed" = 1 ]; then systemctl try-restart {AGENT_UNIT} || true; echo changed; else echo unchanged; fi
"""
