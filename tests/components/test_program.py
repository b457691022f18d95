"""The whole program under Pulumi mocks (see pulumi_harness for what that does and does not cover)."""

import copy

import pytest

from .pulumi_harness import is_secret, mock_token, plain_strings, run_program, unwrap

SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def wheels(tmp_path, monkeypatch):
    directory = tmp_path / "wheels"
    directory.mkdir()
    (directory / "nxfarm_cache_server-0.1.0-py3-none-any.whl").write_bytes(b"wheel bytes v1")
    (directory / "aiohttp-3.14.5-cp311-cp311-manylinux.whl").write_bytes(b"dependency")
    monkeypatch.setenv("NXFARM_WHEELS_DIR", str(directory))
    return directory


def run(raw):
    return run_program(raw, {"sshPrivateKey": SSH_KEY})


def token_values(result):
    return {r.name: unwrap(r.inputs) for r in result.of_type("random:index/randomPassword:RandomPassword")}


def test_program_declares_the_cache_host_with_one_token_per_agent_and_orchestrator(raw_config):
    result = run(raw_config)
    assert result.error is None, result.error
    names = result.by_name()
    assert {r.name for r in result.of_type("random:index/randomPassword:RandomPassword")} == {
        "cache-token-agent-1", "cache-token-agent-2", "cache-token-operator"}
    assert names["cache"].typ == "nxfarm:index:CacheHost"
    for child in ("cache-wheels", "cache-tokens", "cache-service"):
        assert child in names
    for resource in result.of_type("command:remote:Command") + result.of_type("command:remote:CopyToRemote"):
        connection = resource.inputs["connection"]
        assert is_secret(connection), "connections (private key) must stay secret"
        assert unwrap(connection)["hostKey"] == raw_config["cacheHost"]["hostKey"], "host key pinned"
    tokens = names["cache-tokens"]
    assert is_secret(tokens.inputs["stdin"])
    assert unwrap(tokens.inputs["stdin"]).count("readwrite sha256:") == 3


def test_no_secret_appears_outside_secret_inputs(raw_config):
    result = run(raw_config)
    secrets = [SSH_KEY.strip()]
    secrets += [mock_token(f"cache-token-{name}", {"generation": "1"}) for name in ("agent-1", "agent-2", "operator")]
    tokens_text = unwrap(result.by_name()["cache-tokens"].inputs["stdin"])
    assert not any(secret in tokens_text for secret in secrets[1:]), "the tokens file holds hashes only"
    scanned = 0
    for resource in result.resources:
        for text in plain_strings(resource.inputs):
            scanned += 1
            for secret in secrets:
                assert secret not in text, f"{resource.name} carries a secret in a plain input"
    assert scanned >= 10  # commands, scripts, unit text, paths: the scan really looked


def test_invalid_config_registers_nothing(raw_config):
    raw = copy.deepcopy(raw_config)
    del raw["agents"][1]["host"]
    result = run(raw)
    assert result.error is not None and "nx-farm:agents[1].host: field required" in str(result.error)
    assert result.resources == []


def test_missing_wheels_stop_before_any_resource(raw_config, wheels):
    for wheel in wheels.iterdir():
        wheel.unlink()
    result = run(raw_config)
    assert "run `make wheels` before `pulumi up`" in str(result.error)
    assert result.resources == []


def test_bumping_the_generation_renews_every_token_and_nothing_else_on_the_service(raw_config):
    before = run(raw_config)
    after = run({**raw_config, "secretsGeneration": 2})
    old, new = token_values(before), token_values(after)
    assert old.keys() == new.keys() and all(old[k] != new[k] for k in old)
    b, a = before.by_name(), after.by_name()
    assert unwrap(b["cache-tokens"].inputs["stdin"]) != unwrap(a["cache-tokens"].inputs["stdin"])
    assert unwrap(b["cache-service"].inputs) == unwrap(a["cache-service"].inputs), "no restart for a token change"


def test_new_wheels_update_the_service_command(raw_config, wheels):
    before = run(raw_config)
    (wheels / "nxfarm_cache_server-0.1.0-py3-none-any.whl").write_bytes(b"wheel bytes v2")
    after = run(raw_config)
    create_before = unwrap(before.by_name()["cache-service"].inputs)["create"]
    create_after = unwrap(after.by_name()["cache-service"].inputs)["create"]
    assert create_before != create_after and "triggers" not in after.by_name()["cache-service"].inputs


def test_adding_an_agent_adds_its_token_and_changes_only_the_tokens_file(raw_config):
    from tests.helpers import host_key

    before = run(raw_config)
    raw = copy.deepcopy(raw_config)
    raw["agents"].append({"name": "agent-3", "host": "100.64.0.13", "hostKey": host_key(4),
                          "ageRecipient": raw_config["agents"][0]["ageRecipient"]})
    after = run(raw)
    b, a = before.by_name(), after.by_name()
    assert set(a) - set(b) == {"cache-token-agent-3"}
    changed = {name for name in b if unwrap(b[name].inputs) != unwrap(a[name].inputs)}
    assert changed == {"cache-tokens"}


def test_one_acl_holds_the_base_policy_and_the_farm(raw_config):
    import json

    result = run(raw_config)
    (acl,) = result.of_type("tailscale:index/acl:Acl")
    assert acl.name == "tailnet-acl"
    policy = json.loads(acl.inputs["acl"])
    assert policy["nodeAttrs"] and policy["groups"]["group:nx-operators"] == ["alice@example.com"]
    assert "tag:nx-cache" in policy["tagOwners"] and policy["tests"]
    assert result.by_name()["tailnet"].typ == "nxfarm:index:TailnetPolicy"


def test_unreadable_base_policy_stops_before_any_resource(raw_config):
    raw = {**raw_config, "tailnet": {"basePolicyFile": "infra/missing.hujson"}}
    result = run(raw)
    assert "nx-farm:tailnet.basePolicyFile: cannot read" in str(result.error)
    assert result.resources == []
