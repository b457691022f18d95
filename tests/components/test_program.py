"""The whole program under Pulumi mocks (see pulumi_harness for what that does and does not cover)."""

import copy

import pytest

from tests.helpers import fake_wheel_sets

from .pulumi_harness import is_secret, mock_token, plain_strings, run_program, unwrap

SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def wheels(tmp_path, monkeypatch):
    """Stand-ins for `make wheels` output: dist/wheels/{cache,agent}/<platform>/."""
    directory = fake_wheel_sets(tmp_path / "wheels")
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
        "cache-token-agent-1", "cache-token-agent-1-branch", "cache-token-agent-2", "cache-token-agent-2-branch",
        "cache-token-operator"}
    assert names["cache"].typ == "nxfarm:index:CacheHost"
    for child in ("cache-wheels", "cache-tokens", "cache-service", "sops-config", "sops-infra-nx-farm",
                  "sops-infra-agents-agent-1", "agent-1-env", "agent-1-enable", "agent-1-tags", "agent-1-key"):
        assert child in names
    assert names["agent-1"].typ == "nxfarm:index:NxAgent" and names["sops"].typ == "nxfarm:index:SopsRecipients"
    assert unwrap(names["agent-1-tags"].inputs)["tags"] == ["tag:nx-agent"]
    assert unwrap(names["agent-1-key"].inputs)["keyExpiryDisabled"] is True
    assert unwrap(names["cache-tags"].inputs)["tags"] == ["tag:nx-cache"]
    keys = {entry["host"]: entry["hostKey"] for entry in [raw_config["cacheHost"], *raw_config["agents"]]}
    remotes = result.of_type("command:remote:Command") + result.of_type("command:remote:CopyToRemote")
    assert len(remotes) == 4 + 6 + 8 * len(raw_config["agents"])  # cache, scheduler + health, agents
    assert names["cache-scheduler"].typ == "nxfarm:index:FarmScheduler"
    assert is_secret(names["cache-scheduler-tls"].inputs["stdin"])
    assert "--bind 100.64.0.10 --port 8786" in unwrap(names["cache-scheduler-service"].inputs["stdin"])
    assert names["cache-scheduler-service"].depends_on >= {"cache-scheduler-wheels", "cache-scheduler-tls"}
    members = {r.name for r in result.of_type("tls:index/locallySignedCert:LocallySignedCert")}
    assert members == {"farm-ca-scheduler-cert", "farm-ca-agent-1-cert", "farm-ca-agent-2-cert",
                       "farm-ca-orchestrator-operator-cert"}
    for resource in remotes:
        connection = resource.inputs["connection"]
        assert is_secret(connection), "connections (private key) must stay secret"
        assert unwrap(connection)["hostKey"] == keys[unwrap(connection)["host"]], "host key pinned, per host"
    for sync in (r for r in result.of_type("command:local:Command") if r.name != "sops-config"):
        assert is_secret(sync.inputs["stdin"]), f"{sync.name}: plaintext env must stay secret"
        assert "nxfarm.sops sync" in sync.inputs["create"]
    tokens = names["cache-tokens"]
    assert is_secret(tokens.inputs["stdin"])
    assert unwrap(tokens.inputs["stdin"]).count("readwrite sha256:") == 5  # two per agent, one per orchestrator


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
    import base64
    from .pulumi_harness import _MOCK_KEYS
    keys = list(_MOCK_KEYS.values())
    assert len(keys) >= 5  # the CA, the scheduler, two agents, one orchestrator
    for resource in result.resources:
        for text in plain_strings(resource.inputs):
            for key in keys:
                body = key.splitlines()[1]
                assert body not in text and base64.b64encode(key.encode()).decode()[:40] not in text, \
                    f"{resource.name} carries a TLS private key in a plain input"


def test_invalid_config_registers_nothing(raw_config):
    raw = copy.deepcopy(raw_config)
    del raw["agents"][1]["host"]
    result = run(raw)
    assert result.error is not None and "nx-farm:agents[1].host: field required" in str(result.error)
    assert result.resources == []


def test_missing_wheels_stop_before_any_resource(raw_config, wheels):
    for wheel in (wheels / "cache" / "cp311-x86_64").iterdir():
        wheel.unlink()
    result = run(raw_config)
    assert "nx-farm:cacheHost: no wheel of nxfarm-cache-server fits Python 3.11 on x86_64" in str(result.error)
    assert "run `make wheels`" in str(result.error)
    assert result.resources == []


def test_new_runtime_wheels_update_every_agent_and_nothing_else(raw_config, wheels):
    before = run(raw_config)
    (wheels / "agent" / "cp311-x86_64" / "nxfarm-0.1.0-py3-none-any.whl").write_bytes(b"runtime v2")
    added, removed, changed = changed_between(before, run(raw_config))
    # The scheduler runs the same runtime (client and workers must match its dask version).
    assert added == removed == set() and changed == {"agent-1-runtime", "agent-2-runtime", "cache-scheduler-service"}


def test_removal_stops_the_health_check_before_the_services_it_heals(raw_config):
    resources = run(raw_config).by_name()
    for name, last in (("agent-1-enable", "nx-farm-agent.service"), ("cache-scheduler-health", None)):
        delete = unwrap(resources[name].inputs)["delete"]
        order = [delete.index(f"disable --now {unit}") for unit in
                 ("nx-farm-health.timer", "nx-farm-health.service", *([last] if last else []))]
        assert order == sorted(order), (name, delete)
        assert "reset-failed nx-farm-health.service" in delete
    for name in ("agent-1-unit-nx-farm-agent-service", "cache-scheduler-service", "cache-service"):
        assert "reset-failed" in unwrap(resources[name].inputs)["delete"], name


def test_purge_flag_decides_whether_destroy_deletes_the_cached_data(raw_config):
    keep = unwrap(run(raw_config).by_name()["cache-service"].inputs)["delete"]
    purge = unwrap(run({**raw_config, "cacheHost": {**raw_config["cacheHost"], "purgeOnDestroy": True}})
                   .by_name()["cache-service"].inputs)["delete"]
    assert "disable --now nx-farm-cache.service" in keep and "/var/lib/nx-farm/cache" not in keep
    assert "rm -rf /var/lib/nx-farm/cache" in purge


def test_new_wheels_update_the_service_command(raw_config, wheels):
    before = run(raw_config)
    (wheels / "cache" / "cp311-x86_64" / "nxfarm_cache_server-0.1.0-py3-none-any.whl").write_bytes(b"wheel v2")
    after = run(raw_config)
    create_before = unwrap(before.by_name()["cache-service"].inputs)["create"]
    create_after = unwrap(after.by_name()["cache-service"].inputs)["create"]
    assert create_before != create_after and "triggers" not in after.by_name()["cache-service"].inputs


def changed_between(before, after):
    b, a = before.by_name(), after.by_name()
    return (set(a) - set(b), set(b) - set(a),
            {name for name in set(a) & set(b) if unwrap(b[name].inputs) != unwrap(a[name].inputs)})


def test_adding_an_agent_adds_only_its_resources_and_touches_tokens_policy_and_sops_files(raw_config):
    from tests.helpers import host_key

    before = run(raw_config)
    raw = copy.deepcopy(raw_config)
    raw["agents"].append({"name": "agent-3", "host": "100.64.0.13", "hostKey": host_key(4),
                          "ageRecipient": "age1" + "z" * 58, "tags": ["tag:gpu"]})
    after = run(raw)
    added, removed, changed = changed_between(before, after)
    assert removed == set()
    assert added == {"cache-token-agent-3", "cache-token-agent-3-branch", "agent-3", "agent-3-preflight", "agent-3-wheels", "agent-3-runtime",
                     "agent-3-env",
                     "agent-3-unit-nx-farm-agent-service",
                     "agent-3-unit-nx-farm-health-service", "agent-3-unit-nx-farm-health-timer", "agent-3-enable", "agent-3-tags", "agent-3-key",
                     "sops-infra-agents-agent-3", "farm-ca-agent-3-key", "farm-ca-agent-3-csr",
                     "farm-ca-agent-3-cert"}
    assert changed == {"cache-tokens", "tailnet-acl", "sops-config", "sops-infra-nx-farm"}
    assert "age1" + "z" * 58 in unwrap(after.by_name()["sops-config"].inputs)["stdin"]


def test_removing_an_agent_removes_its_resources_token_and_recipient(raw_config):
    before = run(raw_config)
    raw = copy.deepcopy(raw_config)
    gone = raw["agents"].pop(1)
    after = run(raw)
    added, removed, changed = changed_between(before, after)
    assert added == set()
    assert {"cache-token-agent-2", "agent-2", "agent-2-env", "agent-2-tags", "sops-infra-agents-agent-2",
            "farm-ca-agent-2-key", "farm-ca-agent-2-cert"} <= removed
    assert changed == {"cache-tokens", "sops-config", "sops-infra-nx-farm"}
    assert "agent-2 " not in unwrap(after.by_name()["cache-tokens"].inputs["stdin"])
    assert gone["ageRecipient"] not in unwrap(after.by_name()["sops-config"].inputs)["stdin"]
    shared = unwrap(after.by_name()["sops-infra-nx-farm"].inputs)["create"]
    assert gone["ageRecipient"] not in shared, "the shared file is re-synced (rotated) without the agent"


def test_bumping_the_generation_changes_every_token_and_encrypted_file(raw_config):
    before = run(raw_config)
    after = run({**raw_config, "secretsGeneration": 2})
    added, removed, changed = changed_between(before, after)
    assert added == removed == set()
    encrypted = {"sops-infra-nx-farm", "sops-infra-agents-agent-1", "sops-infra-agents-agent-2"}
    tokens = {"cache-token-agent-1", "cache-token-agent-2", "cache-token-operator", "cache-token-agent-1-branch",
              "cache-token-agent-2-branch"}
    members = ("scheduler", "agent-1", "agent-2", "orchestrator-operator")
    new_certs = {"farm-ca-ca", *(f"farm-ca-{m}-{kind}" for m in members for kind in ("csr", "cert"))}
    assert changed == tokens | encrypted | new_certs | {"cache-tokens", "agent-1-env", "agent-2-env",
                                                        "cache-scheduler-tls"}
    # Only the tokens are replaced (their keepers); everything else changes by update. Only the wheel
    # copies use `triggers` (the connection: they have no delete to run), and those did not change.
    assert {r.name for r in after.resources if r.inputs.get("triggers")} == {
        "cache-wheels", "cache-scheduler-wheels", "agent-1-wheels", "agent-2-wheels"}


def test_the_example_stack_runs_whole(raw_config):
    import yaml

    from .pulumi_harness import ROOT

    stack = yaml.safe_load((ROOT / "Pulumi.homelab.yaml").read_text())["config"]
    config = {key.split(":", 1)[1]: value for key, value in stack.items() if key.startswith("nx-farm:")}
    result = run(config)
    assert result.error is None, result.error
    assert len(result.of_type("nxfarm:index:NxAgent")) == 3
    tags = {r.name: unwrap(r.inputs)["tags"] for r in result.of_type("tailscale:index/deviceTags:DeviceTags")}
    assert tags == {"cache-tags": ["tag:nx-cache"], "agent-desk-tags": ["tag:nx-agent"],
                    "agent-nuc-tags": ["tag:nx-agent"]}, "agent-wsl sits behind a subnet router: not a device"


def test_orchestrators_get_their_cluster_certificate_as_a_secret_output(raw_config):
    from cryptography import x509

    result = run(raw_config)
    assert result.error is None, result.error
    assert result.outputs["schedulerAddress"] == "tls://100.64.0.10:8786"
    exported = result.outputs["orchestratorTls"]
    assert is_secret(exported), "the orchestrators' keys leave the program only as a secret"
    bundle = unwrap(exported)["operator"]
    cert = x509.load_pem_x509_certificate(bundle["cert"].encode())
    ca = x509.load_pem_x509_certificate(bundle["ca"].encode())
    cert.verify_directly_issued_by(ca)
    assert "PRIVATE KEY" in bundle["key"]
    assert cert.subject.rfc4514_string().startswith("CN=orchestrator-operator")


def test_every_farm_certificate_names_its_member_and_role(raw_config):
    result = run(raw_config)
    assert result.error is None, result.error
    subjects = {r.name: unwrap(r.inputs)["subject"] for r in result.of_type("tls:index/certRequest:CertRequest")}
    assert subjects == {
        "farm-ca-scheduler-csr": {"commonName": "scheduler", "organization": "nx-farm", "organizationalUnit": "scheduler"},
        "farm-ca-agent-1-csr": {"commonName": "agent-1", "organization": "nx-farm", "organizationalUnit": "agent"},
        "farm-ca-agent-2-csr": {"commonName": "agent-2", "organization": "nx-farm", "organizationalUnit": "agent"},
        "farm-ca-orchestrator-operator-csr": {"commonName": "orchestrator-operator", "organization": "nx-farm",
                                              "organizationalUnit": "orchestrator"},
    }


def test_each_token_gets_its_tier_and_each_agent_the_repositories_it_builds(raw_config):
    raw_config["orchestrators"] = ["laptop", {"name": "main-ci", "tier": "trusted"}, {"name": "pr-ci", "tier": "read"}]
    raw_config["trust"]["protectedBranches"] = ["main", "release/*"]
    result = run(raw_config)
    assert result.error is None, result.error
    lines = {line.split()[0]: line.split()[1:2] + line.split()[3:]
             for line in unwrap(result.by_name()["cache-tokens"].inputs["stdin"]).splitlines()
             if not line.startswith("#")}
    assert lines == {"agent-1": ["readwrite", "ns=trusted"], "agent-1-branch": ["readwrite", "ns=*"],
                     "agent-2": ["readwrite", "ns=trusted"], "agent-2-branch": ["readwrite", "ns=*"],
                     "laptop": ["readwrite", "ns=laptop"], "main-ci": ["readwrite", "ns=trusted"], "pr-ci": ["read"]}
    urls = unwrap(result.outputs["orchestratorCacheUrls"])
    assert urls == {"laptop": "http://100.64.0.10:3333/ns/laptop", "main-ci": "http://100.64.0.10:3333",
                    "pr-ci": "http://100.64.0.10:3333"}
    env = unwrap(result.by_name()["sops-infra-agents-agent-1"].inputs["stdin"])
    assert "NXFARM_ALLOWED_REPOS=https://git.example/team/*\n" in env
    assert "NXFARM_PROTECTED_BRANCHES=main release/*\n" in env
    assert f"NXFARM_CACHE_BRANCH_TOKEN={mock_token('cache-token-agent-1-branch', {'generation': '1'})}" in env
