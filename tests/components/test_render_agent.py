import os
import shutil
import subprocess

import pytest

from components.render.agent import HEALTH_UNIT, agent_unit, env_file, health_service, health_timer, install_script
from components.settings import TrustSettings, validate


@pytest.fixture
def agent(raw_config):
    return validate(raw_config).agents[0]


def test_units_pass_systemd_analyze_verify(agent, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    root = tmp_path / "agent"
    (root / "venv" / "bin").mkdir(parents=True)
    for tool in ("nxfarm", "sops"):
        os.symlink("/bin/true", root / "venv" / "bin" / tool)
    agent = agent.model_copy(update={"sops_path": str(root / "venv" / "bin" / "sops")})
    files = {"nx-farm-agent.service": agent_unit(agent, "nxfarm", install_root=str(root)),
             HEALTH_UNIT: health_service("http://100.64.0.10:3333", install_root=str(root)), "nx-farm-health.timer": health_timer()}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    result = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / n) for n in files)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_agent_unit_decrypts_at_start_and_binds_its_own_address(agent):
    unit = agent_unit(agent, "nxfarm")
    lines = unit.splitlines()
    exec_start = next(l for l in lines if l.startswith("ExecStart="))
    assert exec_start.startswith("ExecStart=/opt/nx-farm/agent/venv/bin/nxfarm agent run ")
    assert "--slots 4" in exec_start and "--bind 100.64.0.11" in exec_start and "0.0.0.0" not in unit
    assert "--port 8789" in exec_start, "the worker port the tailnet policy opens to the scheduler"
    assert "--sandbox" in exec_start, "builds run as the slots' build users"
    assert "User=nxfarm" in unit
    # Root decrypts with the age key; the agent's own process never names it.
    pre = next(l for l in lines if l.startswith("ExecStartPre="))
    assert pre.startswith("ExecStartPre=+/bin/sh -c ") and "SOPS_AGE_KEY_FILE=/etc/nx-farm/agent-age.key" in pre
    assert "--output /run/nx-farm-agent/env /etc/nx-farm/agent.sops.env" in pre
    assert "ExecStartPost=+/bin/rm -f /run/nx-farm-agent/env" in lines
    assert not [l for l in lines if l.startswith("Environment=") and "SOPS_AGE_KEY_FILE" in l]
    for setting in ("ProtectSystem=strict", "ReadWritePaths=/var/lib/nx-farm/workspace", "ProtectHome=yes",
                    "PrivateDevices=yes", "ProtectKernelTunables=yes", "ProtectKernelModules=yes",
                    "ProtectControlGroups=yes", "NoNewPrivileges=yes", "MemoryMax=90%", "TasksMax=8192",
                    "CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_KILL"):
        assert setting in lines, setting


def test_env_file_is_dotenv_and_refuses_multiline_values(agent):
    pems = ("-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n",
            "-----BEGIN CERTIFICATE-----\nME\n-----END CERTIFICATE-----\n",
            "-----BEGIN PRIVATE KEY-----\nKEY\n-----END PRIVATE KEY-----\n")
    trust = TrustSettings(repositories=["https://git.example/a.git", "https://git.example/b/*"])
    text = env_file(cache_url="http://100.64.0.10:3333", token="t0k", branch_token="b0k",
                    scheduler_address="tls://100.64.0.10:8786", agent=agent, trust=trust, tls=pems)
    assert "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN=t0k\n" in text and text.count("\n") == 10
    assert "NXFARM_CACHE_BRANCH_TOKEN=b0k\n" in text and "NXFARM_PROTECTED_BRANCHES=\n" in text
    assert "NXFARM_ALLOWED_REPOS=https://git.example/a.git https://git.example/b/*\n" in text
    values = dict(line.split("=", 1) for line in text.splitlines())
    from nxfarm.farm.security import _material
    assert _material("key", values["NXFARM_TLS_KEY"]) == pems[2], "what the agent decodes is the key we encoded"
    with pytest.raises(ValueError, match="NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN must be a single line"):
        env_file(cache_url="http://x", token="a\nB=c", branch_token="b", scheduler_address="tls://x:1", agent=agent,
                 trust=trust, tls=pems)


def test_install_script_is_valid_shell_and_checks_its_prerequisites(agent):
    script = install_script(agent, "nxfarm", "/opt/nx-farm/wheels/agent")
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0
    assert "install sops 3.9+ there, or set agents[].sopsPath" in script
    assert "age-keygen -o /etc/nx-farm/agent-age.key" in script
    assert "--no-index --find-links /opt/nx-farm/wheels/agent nxfarm" in script
