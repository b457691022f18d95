"""The cache on S3 storage with several cache hosts: stack config, what each host gets (unit,
credentials file), the tailnet policy, and the whole program under Pulumi's mocks."""

import argparse
import copy
import shlex
import shutil
import subprocess

import pytest

from cache_server.config import Settings
from components.render.cache_host import (
    S3_CREDENTIALS_PATH,
    cache_unit,
    install_script,
    remove_script,
    s3_credentials_file,
    s3_credentials_install_command,
)
from components.render.tailnet_policy import build_policy, farm_grants, parse_hujson
from components.settings import ConfigInvalid, validate
from tests.helpers import fake_wheel_sets, host_key

from .pulumi_harness import is_secret, plain_strings, run_program, unwrap

SSH_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot-a-real-key\n-----END OPENSSH PRIVATE KEY-----\n"
ACCESS_KEY, SECRET_KEY = "AKIDnxfarmTEST", "s3cr3t/Key+for-the-test-Xq9"
STORE = {"endpoint": "http://100.64.0.20:7480", "bucket": "nx-cache", "prefix": "farm", "localTierSize": "20GiB"}


@pytest.fixture
def s3_config(raw_config):
    raw = copy.deepcopy(raw_config)
    raw["cacheHost"].update(storage=dict(STORE), maxSize="500GiB")
    raw["cacheFrontends"] = [{"name": "edge", "host": "100.64.0.13", "hostKey": host_key(4), "port": 3334,
                              "workers": 2, "storagePath": "/srv/nx-tier"}]
    raw["agents"][1]["cacheHost"] = "edge"
    raw["orchestrators"] = [{"name": "laptop", "cacheHost": "edge"}, {"name": "ci", "tier": "trusted"}]
    return raw


def test_frontends_share_the_storage_and_caps_and_keep_their_own_address_and_disk(s3_config):
    settings = validate(s3_config)
    first, edge = settings.cache_hosts
    assert (first.name, edge.name) == ("cache", "edge")
    assert edge.storage == first.storage and edge.storage.url == "s3://nx-cache/farm"
    assert edge.max_size == "500GiB" and edge.max_artifact_size == first.max_artifact_size
    assert (edge.host, edge.port, edge.workers, edge.storage_path) == ("100.64.0.13", 3334, 2, "/srv/nx-tier")
    assert edge.host_key == host_key(4) and edge.listen_address == "100.64.0.13"
    assert settings.cache_host_named("edge") == edge and settings.cache_host_named(None) == first


@pytest.mark.parametrize("change, expected", [
    (lambda raw: raw["cacheHost"].pop("storage"),
     "nx-farm:cacheFrontends: more than one cache host needs cacheHost.storage"),
    (lambda raw: raw["cacheFrontends"].append({**raw["cacheFrontends"][0], "host": "100.64.0.14"}),
     "nx-farm:cacheFrontends[1].name: duplicate cache host name 'edge' (also cacheFrontends[0])"),
    (lambda raw: raw["cacheFrontends"][0].update(host="100.64.0.10"),
     "nx-farm:cacheFrontends[0].host: two cache hosts on one address '100.64.0.10' (also cacheHost)"),
    (lambda raw: raw["cacheFrontends"][0].update(host="edge.lan"),
     "nx-farm:cacheFrontends[0].bindAddress: required when cacheFrontends[0].host is a DNS name"),
    (lambda raw: raw["agents"][1].update(cacheHost="nope"),
     "nx-farm:agents[1].cacheHost: 'nope' is not a cache host (one of cache, edge)"),
    (lambda raw: raw["orchestrators"][0].update(cacheHost="nope"),
     "nx-farm:orchestrators[0].cacheHost: 'nope' is not a cache host"),
    (lambda raw: raw["cacheHost"]["storage"].update(endpoint="nas:9000"),
     "nx-farm:cacheHost.storage.endpoint: must be http(s)://host[:port] with no path, got 'nas:9000'"),
    (lambda raw: raw["cacheHost"]["storage"].update(bucket="Nx_Cache"),
     "nx-farm:cacheHost.storage.bucket: 'Nx_Cache' is not a bucket name"),
    (lambda raw: raw["cacheHost"]["storage"].update(prefix="a/../b"),
     "nx-farm:cacheHost.storage.prefix: 'a/../b' is not a key prefix"),
    (lambda raw: raw["cacheHost"]["storage"].update(accessKey="AKID"),
     "nx-farm:cacheHost.storage.accessKey: extra inputs are not permitted"),
    (lambda raw: raw["cacheFrontends"][0].update(maxSize="1GiB"),
     "nx-farm:cacheFrontends[0].maxSize: extra inputs are not permitted"),
])
def test_bad_cache_host_config_is_named(s3_config, change, expected):
    change(s3_config)
    with pytest.raises(ConfigInvalid) as caught:
        validate(s3_config)
    assert expected in str(caught.value), str(caught.value)


def server_settings(unit: str) -> Settings:
    """The unit's ExecStart as the real cache server parses it."""
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.removeprefix("ExecStart="))[3:]  # after `python -m cache_server`
    parser = argparse.ArgumentParser()
    Settings.register_arguments(parser)
    return Settings.from_args(parser.parse_args(argv))


def test_the_unit_stores_in_the_bucket_with_a_local_tier_and_credentials_from_a_file(s3_config):
    edge = validate(s3_config).cache_hosts[1]
    unit = cache_unit(edge)
    parsed = server_settings(unit)
    assert parsed.on_s3 and parsed.storage == "s3://nx-cache/farm" and parsed.s3_endpoint == STORE["endpoint"]
    assert parsed.local_tier == "/srv/nx-tier" and parsed.local_tier_size == 20 << 30
    assert parsed.max_size == 500 << 30 and parsed.workers == 2
    assert parsed.binds == [("100.64.0.13", 3334), ("127.0.0.1", 3334)]
    assert f"Environment=AWS_SHARED_CREDENTIALS_FILE={S3_CREDENTIALS_PATH}\n" in unit
    assert "Environment=AWS_EC2_METADATA_DISABLED=true\n" in unit, "no metadata-service probes on a homelab"
    assert "ReadWritePaths=/srv/nx-tier\n" in unit
    assert "'nxfarm-cache-server[s3]'" in install_script(edge, "/opt/wheels")
    assert S3_CREDENTIALS_PATH in remove_script(edge, purge=False)
    del s3_config["cacheHost"]["storage"], s3_config["cacheFrontends"], s3_config["agents"][1]["cacheHost"]
    del s3_config["orchestrators"]
    disk = validate(s3_config).cache_host
    assert "AWS_" not in cache_unit(disk) and "[s3]" not in install_script(disk, "/opt/wheels")


def test_the_s3_unit_passes_systemd_analyze_verify(s3_config, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed")
    root = tmp_path / "opt"
    (root / "venv" / "bin").mkdir(parents=True)
    (root / "venv" / "bin" / "python").symlink_to(shutil.which("python3"))
    unit = tmp_path / "nx-farm-cache.service"
    unit.write_text(cache_unit(validate(s3_config).cache_host, install_root=str(root)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_botocore_reads_the_credentials_file_and_bad_values_are_refused_unnamed(s3_config, tmp_path, monkeypatch):
    import botocore.session

    path = tmp_path / "credentials"
    path.write_text(s3_credentials_file(ACCESS_KEY, SECRET_KEY))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    credentials = botocore.session.get_session().get_credentials()
    assert (credentials.access_key, credentials.secret_key) == (ACCESS_KEY, SECRET_KEY)
    for access, secret, field in ((ACCESS_KEY, "two\nlines", "s3SecretAccessKey"), (" ", SECRET_KEY, "s3AccessKeyId")):
        with pytest.raises(ValueError) as caught:
            s3_credentials_file(access, secret)
        assert field in str(caught.value) and "two" not in str(caught.value)
    command = s3_credentials_install_command(validate(s3_config).cache_host)
    assert "/dev/stdin" in command and "systemctl restart nx-farm-cache.service" in command


def test_the_policy_lets_agents_reach_every_frontend_and_cache_hosts_the_store(s3_config):
    from pathlib import Path

    from tests.standin.tailnet import validate_policy

    settings = validate(s3_config)
    grants = farm_grants(settings)
    agents = next(g for g in grants if g["src"] == ["tag:nx-agent"])
    assert agents["dst"] == ["tag:nx-cache"] and agents["ip"] == ["tcp:3333", "tcp:3334", "tcp:8786"]
    store = [g for g in grants if g["dst"] == ["100.64.0.20"]]
    assert store == [{"src": ["tag:nx-cache"], "dst": ["100.64.0.20"], "ip": ["tcp:7480"]}]
    root = Path(__file__).resolve().parents[2]
    base = parse_hujson((root / "infra" / "tailnet-policy.hujson").read_text(), "base")
    policy = build_policy(base, settings)
    assert validate_policy(policy) == [], "every test the farm adds holds (as Tailscale checks them)"
    tests = {test["src"]: test for test in policy["tests"]}
    assert {"tag:nx-cache:3333", "tag:nx-cache:3334"} <= set(tests["tag:nx-agent"]["accept"])
    assert "100.64.0.20:7480" in tests["tag:nx-cache"]["accept"]
    assert "100.64.0.20:7480" in tests["tag:nx-agent"]["deny"], "agents never talk to the store"
    assert "tag:nx-cache:8790" in tests["tag:nx-orchestrator"]["accept"], "orchestrators read the run pages"
    assert "tag:nx-cache:8790" in tests["tag:nx-agent"]["deny"], "agents do not"
    # A store on the LAN (not a tailnet address) needs no grant.
    s3_config["cacheHost"]["storage"]["endpoint"] = "http://192.168.1.20:9000"
    lan = validate(s3_config)
    assert not [g for g in farm_grants(lan) if g["src"] == ["tag:nx-cache"] and "tcp:9000" in g["ip"]]
    assert validate_policy(build_policy(base, lan)) == []


@pytest.fixture
def wheels(tmp_path, monkeypatch):
    directory = fake_wheel_sets(tmp_path / "wheels")
    monkeypatch.setenv("NXFARM_WHEELS_DIR", str(directory))
    return directory


def run_s3(raw, **secrets):
    return run_program(raw, {"sshPrivateKey": SSH_KEY, **secrets})


def test_the_program_declares_every_cache_host_with_the_store_credentials_as_secrets(s3_config, wheels):
    result = run_s3(s3_config, s3AccessKeyId=ACCESS_KEY, s3SecretAccessKey=SECRET_KEY)
    assert result.error is None, result.error
    names = result.by_name()
    assert names["edge"].typ == names["cache"].typ == "nxfarm:index:CacheHost"
    assert "edge-scheduler" not in names and "cache-scheduler" in names, "one scheduler, beside the first cache host"
    for host, address in (("cache", "100.64.0.10"), ("edge", "100.64.0.13")):
        credentials = names[f"{host}-s3-credentials"]
        assert is_secret(credentials.inputs["stdin"])
        assert unwrap(credentials.inputs["stdin"]) == s3_credentials_file(ACCESS_KEY, SECRET_KEY)
        assert unwrap(credentials.inputs["connection"])["host"] == address
        assert names[f"{host}-service"].depends_on >= {f"{host}-s3-credentials", f"{host}-tokens", f"{host}-wheels"}
        assert unwrap(names[f"{host}-tokens"].inputs["stdin"]) == unwrap(names["cache-tokens"].inputs["stdin"]), \
            "every cache host accepts every token"
    assert "--storage s3://nx-cache/farm" in unwrap(names["edge-service"].inputs["stdin"])
    for resource in result.resources:
        for text in plain_strings(resource.inputs):
            assert SECRET_KEY not in text and ACCESS_KEY not in text, f"{resource.name} carries a credential in the clear"
    # Each agent and orchestrator uses the cache host it names (default: the first).
    agent_1 = unwrap(names["sops-infra-agents-agent-1"].inputs["stdin"])
    agent_2 = unwrap(names["sops-infra-agents-agent-2"].inputs["stdin"])
    assert "NX_SELF_HOSTED_REMOTE_CACHE_SERVER=http://100.64.0.10:3333\n" in agent_1
    assert "NX_SELF_HOSTED_REMOTE_CACHE_SERVER=http://100.64.0.13:3334\n" in agent_2
    assert "--cache-url http://100.64.0.13:3334" in unwrap(names["agent-2-unit-nx-farm-health-service"].inputs["stdin"])
    assert unwrap(result.outputs["cacheUrls"]) == {"cache": "http://100.64.0.10:3333", "edge": "http://100.64.0.13:3334"}
    assert unwrap(result.outputs["orchestratorCacheUrls"]) == {"laptop": "http://100.64.0.13:3334/ns/laptop",
                                                               "ci": "http://100.64.0.10:3333"}


def test_s3_storage_without_its_secrets_stops_before_any_resource(s3_config, wheels):
    result = run_s3(s3_config, s3AccessKeyId=ACCESS_KEY)
    assert result.resources == []
    assert "nx-farm:s3SecretAccessKey: required with cacheHost.storage (S3): `pulumi config set --secret " \
           "nx-farm:s3SecretAccessKey ...`" in str(result.error)
    assert "s3AccessKeyId" not in str(result.error)
