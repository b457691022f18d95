"""The CacheHost's declared commands, taken from a run of the whole program under Pulumi mocks and
executed over real SSH on a throwaway systemd host (what the provider would run on `pulumi up`).

Covers: the scripts, units and tokens file on a real machine with no internet. Does not cover:
the Pulumi engine's diffing and the provider's own SSH/SFTP code (see tests/components/pulumi_harness).
"""

import json
import shlex
import urllib.request

import pytest

from tests.components.pulumi_harness import mock_token, run_program, unwrap
from tests.helpers import AGE_A

SSH_KEY = "unused-by-this-test"


def program(host, monkeypatch, wheels):
    monkeypatch.setenv("NXFARM_WHEELS_DIR", str(wheels))
    config = {"cacheHost": {"name": "cache", "host": host.ip, "hostKey": host.host_key},
              "sops": {"operatorRecipients": [AGE_A]}}
    result = run_program(config, {"sshPrivateKey": SSH_KEY})
    assert result.error is None, result.error
    return {r.name: unwrap(r.inputs) for r in result.resources}


def apply(host, resources, names, phase="create"):
    """Do what the provider does for these resources: copy archives, run commands with their stdin."""
    outputs = {}
    for name in names:
        inputs = resources[name]
        if "remotePath" in inputs:  # CopyToRemote of a directory archive ending in "/": its contents
            host.ssh(f"mkdir -p {shlex.quote(inputs['remotePath'])}")
            for item in sorted(__import__("pathlib").Path(inputs["source"][1]).iterdir()):
                host.copy(item, inputs["remotePath"] + "/")
            continue
        outputs[name] = host.ssh(inputs[phase], stdin=inputs.get("stdin") or "").stdout
    return outputs


def get(url, token=None, data=None, method="GET"):
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_cache_host_deploys_serves_is_idempotent_and_destroys_keeping_data(start_host, built_wheels, monkeypatch):
    host = start_host("cache1", "10.231.0.11")
    resources = program(host, monkeypatch, built_wheels)
    order = ["cache-wheels", "cache-tokens", "cache-service"]
    first = apply(host, resources, order)
    assert first["cache-service"].strip().endswith("changed")

    url = f"http://{host.ip}:3333"
    status, body = get(f"{url}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    token = mock_token("cache-token-operator", {"generation": "1"})
    assert get(f"{url}/v1/cache/123", token, b"artifact", "PUT")[0] == 200
    assert get(f"{url}/v1/cache/123", token) == (200, b"artifact")
    assert get(f"{url}/v1/cache/123", "wrong")[0] == 401
    pid = host.ssh("systemctl show -p MainPID --value nx-farm-cache.service").stdout.strip()
    assert host.ssh("stat -c %U /etc/nx-farm/cache-tokens; systemctl show -p User --value nx-farm-cache").stdout.split() == ["root", "nxfarm-cache"]
    assert token not in host.ssh("cat /etc/nx-farm/cache-tokens").stdout

    again = apply(host, resources, order, phase="update")  # `pulumi up` with nothing changed
    assert again["cache-service"].strip().endswith("unchanged")
    assert host.ssh("systemctl show -p MainPID --value nx-farm-cache.service").stdout.strip() == pid, "no restart"

    apply(host, resources, ["cache-service"], phase="delete")  # `pulumi destroy` without purgeOnDestroy
    assert host.ssh("systemctl is-active nx-farm-cache.service", check=False).stdout.strip() in ("inactive", "unknown")
    assert host.ssh("test -e /etc/systemd/system/nx-farm-cache.service", check=False).returncode != 0
    assert host.ssh("ls /var/lib/nx-farm/cache/entries/12/").stdout.split() == ["123"], "cached data kept"
