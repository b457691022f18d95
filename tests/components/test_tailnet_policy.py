import copy
from pathlib import Path

import pytest

from components.render.tailnet_policy import (
    WORKER_PORT,
    PolicyError,
    build_policy,
    farm_grants,
    parse_hujson,
)
from components.settings import validate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def settings(raw_config):
    raw_config["tailnet"] = {"operators": ["group:nx-operators"],
                             "subnetRouters": [{"name": "wsl", "routes": ["192.168.20.0/24"],
                                                "tag": "tag:nx-router"}]}
    raw_config["agents"].append({"name": "agent-wsl", "host": "192.168.20.15", "hostKey": raw_config["agents"][0]["hostKey"],
                                 "ageRecipient": raw_config["agents"][0]["ageRecipient"]})
    return validate(raw_config)


@pytest.fixture
def base():
    return parse_hujson((ROOT / "infra" / "tailnet-policy.hujson").read_text(), "infra/tailnet-policy.hujson")


def test_base_policy_sections_are_never_dropped(base, settings):
    policy = build_policy(base, settings)
    for section, value in base.items():
        if isinstance(value, list):
            assert all(item in policy[section] for item in value), section
        elif isinstance(value, dict):
            assert all(policy[section][k][: len(v)] == v for k, v in value.items()), section
    assert policy["groups"] == base["groups"] and policy["nodeAttrs"] == base["nodeAttrs"]
    assert base == parse_hujson((ROOT / "infra" / "tailnet-policy.hujson").read_text(), "x"), "input not mutated"


def test_farm_tags_are_owned_by_the_operators(base, settings):
    owners = build_policy(base, settings)["tagOwners"]
    for tag in ("tag:nx-agent", "tag:nx-cache", "tag:nx-orchestrator"):
        assert owners[tag] == ["group:nx-operators"]
    assert owners["tag:homelab-wsl2"] == ["group:nx-operators"]


def test_every_grant_between_identities_is_asserted_by_a_test(base, settings):
    policy = build_policy(base, settings)
    tests = policy["tests"]
    for grant in farm_grants(settings):
        ports = [int(ip.split(":")[1]) for ip in grant["ip"]]
        for src in grant["src"]:
            for dst in grant["dst"]:
                if "/" in dst:
                    continue  # routes (CIDRs) cannot appear in tests
                expected = {f"{dst}:{port}" for port in ports}
                covered = {a for t in tests if t["src"] == src for a in t.get("accept", [])}
                assert expected <= covered, (src, dst, expected - covered)
    agent_test = next(t for t in tests if t["src"] == "tag:nx-agent")
    assert "tag:nx-cache:22" in agent_test["deny"]


def test_agent_and_scheduler_ports(base, settings):
    grants = build_policy(base, settings)["grants"]
    assert {"src": ["tag:nx-agent"], "dst": ["tag:nx-cache"], "ip": ["tcp:3333", "tcp:8786"]} in grants
    assert {"src": ["tag:nx-cache"], "dst": ["tag:nx-agent"], "ip": [f"tcp:{WORKER_PORT}"]} in grants
    # An agent behind a subnet router is reached at its own address, not through the whole network.
    assert {"src": ["tag:nx-cache"], "dst": ["192.168.20.15/32"], "ip": [f"tcp:{WORKER_PORT}"]} in grants
    assert {"src": ["group:nx-operators"], "dst": ["192.168.20.15/32"], "ip": ["tcp:22"]} in grants
    assert not [g for g in grants if "192.168.20.0/24" in g["dst"]]


def test_subnet_routes_are_auto_approved_and_ssh_for_the_users_deploys_log_in_as(base, settings):
    policy = build_policy(base, settings)
    assert policy["autoApprovers"]["routes"] == {"192.168.20.0/24": ["tag:nx-router"]}, \
        "only the router's own tag may get the route approved, not every agent"
    assert policy["tagOwners"]["tag:nx-router"] == ["group:nx-operators"]
    # The deploy logs in as sshUser (root by default); the service user `nxfarm` has no login shell.
    assert {"action": "accept", "src": ["group:nx-operators"], "dst": ["tag:nx-agent", "tag:nx-cache"],
            "users": ["root"]} in policy["ssh"]


def test_building_twice_changes_nothing(base, settings):
    once = build_policy(base, settings)
    assert build_policy(copy.deepcopy(once), settings) == once


def test_bad_base_policy_names_the_file():
    with pytest.raises(PolicyError, match="policy.hujson: not valid HuJSON"):
        parse_hujson("{ grants: [", "policy.hujson")
    with pytest.raises(PolicyError, match="must be an object"):
        parse_hujson("[]", "policy.hujson")


def test_the_policy_denies_every_farm_port_pair_it_does_not_need(base, settings):
    tests = {test["src"]: test for test in build_policy(base, settings)["tests"] if test["src"].startswith("tag:nx-")}
    assert {"tag:nx-cache:8787", "tag:nx-agent:8789", "tag:nx-agent:22"} <= set(tests["tag:nx-agent"]["deny"])
    assert {"tag:nx-cache:8787", "tag:nx-agent:8789", "tag:nx-cache:22"} <= set(tests["tag:nx-orchestrator"]["deny"])
    assert {"tag:nx-orchestrator:8789", "tag:nx-agent:22"} <= set(tests["tag:nx-cache"]["deny"])


def test_routes_are_approved_by_hand_without_a_router_tag(raw_config):
    raw_config["tailnet"] = {"subnetRouters": [{"name": "wsl", "routes": ["192.168.20.0/24"]}]}
    base = parse_hujson((ROOT / "infra" / "tailnet-policy.hujson").read_text(), "base")
    assert "autoApprovers" not in build_policy(base, validate(raw_config))
