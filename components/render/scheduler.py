"""The farm's Dask scheduler on the cache host: its unit, TLS env file location, install script.

Its TLS key is at rest on the cache host (mode 0640, readable by the scheduler's user only),
as any TLS server key is; agents keep theirs inside their SOPS-encrypted env file instead.
"""

from __future__ import annotations

import shlex

from .systemd import remove_unit
from .venv import ensure_system_user, unit_from_stdin, venv_from_wheels

UNIT_NAME = "nx-farm-scheduler.service"
SERVICE_USER = "nxfarm-scheduler"
INSTALL_ROOT = "/opt/nx-farm/scheduler"
TLS_ENV_PATH = "/etc/nx-farm/scheduler-tls.env"
DASHBOARD_PORT = 8787
PAGES_PORT = 8790  # the run pages (read-only HTML of the run store), on the cache host's tailnet address
WORKER_TTL = "30s"
STATE_DIRECTORY = "nx-farm-scheduler"  # systemd makes /var/lib/<it>, owned by the service user
RUNS_DB = f"/var/lib/{STATE_DIRECTORY}/runs.sqlite"  # every build's report (nxfarm/runs/)


def scheduler_unit(bind: str, port: int, install_root: str = INSTALL_ROOT) -> str:
    run = shlex.join([f"{install_root}/venv/bin/nxfarm", "scheduler", "run", "--bind", bind, "--port", str(port),
                      "--dashboard-port", str(DASHBOARD_PORT), "--worker-ttl", WORKER_TTL, "--runs-db", RUNS_DB,
                      "--pages-bind", bind, "--pages-port", str(PAGES_PORT)])
    return f"""[Unit]
Description=nx-farm scheduler (Dask, mutual TLS) on {bind}:{port}
Wants=network-online.target
After=network-online.target tailscaled.service

[Service]
Type=exec
User={SERVICE_USER}
EnvironmentFile={TLS_ENV_PATH}
StateDirectory={STATE_DIRECTORY}
ExecStart={run}
Restart=on-failure
RestartSec=5
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes

[Install]
WantedBy=multi-user.target
"""


def tls_install_command() -> str:
    """Reads the NXFARM_TLS_* env file on stdin; atomic replace; restarts a running scheduler."""
    return (f"{ensure_system_user(SERVICE_USER)} && install -d -m 0755 /etc/nx-farm && "
            f"install -m 0640 -o root -g {SERVICE_USER} /dev/stdin {TLS_ENV_PATH}.new && "
            f"mv -f {TLS_ENV_PATH}.new {TLS_ENV_PATH} && (systemctl try-restart {UNIT_NAME} || true)")


def install_script(wheels_dir: str) -> str:
    """Idempotent: venv from the shipped wheels, unit from stdin, restart only on change.
    Prints `changed` or `unchanged` last."""
    return f"""set -eu
changed=0
{ensure_system_user(SERVICE_USER)}
{venv_from_wheels(INSTALL_ROOT, wheels_dir, "nxfarm")}
{unit_from_stdin(UNIT_NAME)}
if [ "$changed" = 1 ]; then echo changed; else echo unchanged; fi
"""


def remove_script() -> str:
    return f"{remove_unit(UNIT_NAME)}; rm -f {TLS_ENV_PATH}; rm -rf {INSTALL_ROOT}"
