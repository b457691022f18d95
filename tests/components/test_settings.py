import copy
from pathlib import Path

import pytest
import yaml

from components.settings import ConfigInvalid, validate

from tests.helpers import host_key

ROOT = Path(__file__).resolve().parents[2]


def problems(raw):
    with pytest.raises(ConfigInvalid) as info:
        validate(raw)
    return str(info.value).splitlines()


def test_valid_config_and_defaults(raw_config):
    settings = validate(raw_config)
    assert settings.cache_host.port == 3333 and settings.cache_host.listen_address == "100.64.0.10"
    assert settings.agents[0].task_slots == 4 and settings.agents[1].task_slots == 2
    assert settings.secrets_generation == 1 and settings.deploy_user == "nxfarm"
    assert settings.tailnet.agent_tag == "tag:nx-agent"


def test_every_problem_is_one_line_naming_the_key_path(raw_config):
    raw = copy.deepcopy(raw_config)
    del raw["agents"][1]["host"]
    raw["agents"][0]["tags"] = ["nx-agent"]
    raw["agents"][0]["ageRecipient"] = "age1nope"
    raw["agents"][0]["hostKey"] = "ssh-ed25519 AAAA"
    raw["cacheHost"]["prot"] = 3333
    raw["tailnet"] = {"cacheTag": "cache"}
    assert sorted(problems(raw)) == sorted([
        "nx-farm:agents[1].host: field required",
        "nx-farm:agents[0].tags: tags must look like 'tag:name' (lowercase letters, digits, -), got 'nx-agent'",
        "nx-farm:agents[0].ageRecipient: not an age recipient (age1 followed by 58 bech32 characters): 'age1nope'...",
        "nx-farm:agents[0].hostKey: host key blob does not encode a ssh-ed25519 key",
        "nx-farm:cacheHost.prot: extra inputs are not permitted",
        "nx-farm:tailnet.cacheTag: tags must look like 'tag:name' (lowercase letters, digits, -), got 'cache'",
    ])


def test_duplicates_and_shared_addresses(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["agents"].append({**raw["agents"][0], "hostKey": host_key(9)})
    raw["agents"].append({**raw["agents"][1], "name": "agent-3"})
    raw["orchestrators"] = ["agent-2"]
    assert problems(raw) == [
        "nx-farm:agents[2].name: duplicate agent name 'agent-1' (also agents[0])",
        "nx-farm:agents[2].host: two agents on one address '100.64.0.11' (also agents[0])",
        "nx-farm:agents[3].host: two agents on one address '100.64.0.12' (also agents[1])",
        "nx-farm:orchestrators[0]: 'agent-2' is also agents[1]'s name; each gets its own token",
    ]


@pytest.mark.parametrize("key, message", [
    ("not a key", "host key must be '<type> <base64>'"),
    ("ssh-dss AAAAB3NzaC1kc3M=", "host key must be '<type> <base64>'"),
    ("ssh-ed25519 !!!", "not valid base64"),
])
def test_malformed_host_keys(raw_config, key, message):
    raw = copy.deepcopy(raw_config)
    raw["cacheHost"]["hostKey"] = key
    (line,) = problems(raw)
    assert line.startswith("nx-farm:cacheHost.hostKey: ") and message in line


def test_dns_cache_host_needs_a_bind_address(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["cacheHost"]["host"] = "cache.tailnet-name.ts.net"
    with pytest.raises(ConfigInvalid, match="cacheHost.bindAddress: required when cacheHost.host is a DNS name"):
        validate(raw)
    raw["cacheHost"]["bindAddress"] = "100.64.0.10"
    assert validate(raw).cache_host.listen_address == "100.64.0.10"


def test_subnet_routes_must_be_networks(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["tailnet"] = {"subnetRouters": [{"name": "router", "routes": ["192.168.10.0/24", "10.0.0.1/8"]}]}
    (line,) = problems(raw)
    assert line.startswith("nx-farm:tailnet.subnetRouters[0].routes: route '10.0.0.1/8'")


def test_checked_in_example_stack_is_valid():
    stack = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())["config"]
    raw = {key.split(":", 1)[1]: value for key, value in stack.items() if key.startswith("nx-farm:")}
    settings = validate(raw)
    assert len(settings.agents) == 3 and settings.sops.operator_recipients


def test_trust_and_tiers_are_checked_by_name(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["orchestrators"] = ["agent-1-branch", {"name": "ci", "tier": "admin"}]
    raw["trust"] = {"repositories": ["-uhttps://x"], "protectedBranches": ["main"]}
    assert problems(raw) == [
        "nx-farm:orchestrators[1].tier: input should be 'read', 'branch' or 'trusted'",
        "nx-farm:trust.repositories: a repository URL has no spaces and does not start with '-': '-uhttps://x'",
    ]
    raw["orchestrators"], raw["trust"] = ["agent-1-branch"], {"repositories": ["https://git.example/*"]}
    assert problems(raw) == [
        "nx-farm:orchestrators[0]: 'agent-1-branch' is the name of agent 'agent-1''s branch-tier cache token; "
        "pick another name"]
    del raw["trust"]
    assert problems(raw) == ["nx-farm:trust: field required"]
