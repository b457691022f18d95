"""Two cache hosts on one S3 bucket, deployed on throwaway systemd hosts by executing what the
program declares (tests/hosts/deploy.py), the store a real Ceph RGW listening on the test hosts'
bridge: an entry stored through one host is a hit through the other; the store's credentials
reach each host only as a file the service reads; rotating them is a config change plus `up`,
and a key that does not work is refused with the store's answer while the old one stays in use."""

import hashlib
import time

import pytest

from tests.components.pulumi_harness import mock_token
from tests.s3.rgw import ACCESS_KEY, BUCKET, SECRET_KEY, Rgw
from tests.standin.engine import StepFailed

from .deploy import Deployment, enroll, on_hosts
from .test_cache_host_deploy import http
from .testhosts import BRIDGE_IP

CREDENTIALS = "/etc/nx-farm/cache-s3-credentials"
ROTATED = ("AKIDNXFARMROTATED2", "rotated-Secret-4Lq8/zz")


def config(first, edge, operator, rgw):
    storage = {"endpoint": rgw.endpoint, "bucket": BUCKET, "prefix": "farm", "localTierSize": "1GiB"}
    return {"cacheHost": {"name": "cache", "host": first.ip, "hostKey": first.host_key, "tailnetDevice": True,
                          "storage": storage, "workers": 1},
            "cacheFrontends": [{"name": "edge", "host": edge.ip, "hostKey": edge.host_key, "tailnetDevice": True,
                                "workers": 2, "port": 3334}],
            "sops": {"operatorRecipients": [operator]}, "trust": {"repositories": ["https://git.example/*"]},
            "orchestrators": [{"name": "operator", "tier": "trusted"}]}


def secrets(access, secret):
    return {"s3AccessKeyId": access, "s3SecretAccessKey": secret}


def main_pid(host):
    return host.ssh("systemctl show -p MainPID --value nx-farm-cache.service").stdout.strip()


def wait_healthy(url, deadline_s=20.0):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            status, body = http(f"{url}/health")
        except OSError:  # restarting: not listening yet
            status, body = 0, b""
        if status == 200 and b'"status": "ok"' in body:
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} not healthy: {http(f'{url}/health')}")


@pytest.fixture
def bridge_rgw(start_host, tmp_path):
    """The hosts first (they make the bridge), then a gateway on the bridge's address."""
    first, edge = start_host("s3cache1", "10.231.0.31"), start_host("s3cache2", "10.231.0.32")
    rgw = Rgw(tmp_path / "rgw", bind=BRIDGE_IP).start()
    yield first, edge, rgw
    rgw.stop()


def test_two_cache_hosts_share_a_bucket_and_rotate_its_credentials(bridge_rgw, built_wheels, monkeypatch, tmp_path):
    monkeypatch.setenv("NXFARM_WHEELS_DIR", str(built_wheels))
    first, edge, rgw = bridge_rgw
    deploy = Deployment(tmp_path, [first, edge], enroll({"cache": first, "edge": edge}), seed=3)
    stack = config(first, edge, deploy.operator_recipient, rgw)
    urls = {"cache": f"http://{first.ip}:3333", "edge": f"http://{edge.ip}:3334"}

    steps = deploy.up(stack, secrets(ACCESS_KEY, SECRET_KEY))
    for host in ("cache", "edge"):
        assert {(f"{host}-s3-credentials", "create"), (f"{host}-service", "create")} <= set(steps)
    assert not [name for name, _ in steps if name.startswith("edge-scheduler")], "one scheduler, on the first host"
    for host in (first, edge):
        assert host.ssh(f"stat -c '%a %U %G' {CREDENTIALS}").stdout.split() == ["640", "root", "nxfarm-cache"]
        pid = main_pid(host)
        exposed = host.ssh(f"systemctl cat nx-farm-cache; tr '\\0' ' ' < /proc/{pid}/cmdline; "
                           f"tr '\\0' '\\n' < /proc/{pid}/environ; journalctl -u nx-farm-cache --no-pager").stdout
        assert SECRET_KEY not in exposed and ACCESS_KEY not in exposed, "the key lives in its file only"
        assert f"AWS_SHARED_CREDENTIALS_FILE={CREDENTIALS}" in exposed

    token = mock_token("cache-token-operator", {"generation": "1"})
    body = hashlib.sha256(b"one").digest() * 5000
    assert http(f"{urls['cache']}/v1/cache/4401", token, body, "PUT")[0] == 200
    assert http(f"{urls['edge']}/v1/cache/4401", token) == (200, body), "stored through one, a hit through the other"
    assert http(f"{urls['edge']}/v1/cache/4401", token, body, "PUT")[0] == 409
    assert rgw.objects("farm/") == {"farm/4401": len(body)}

    assert deploy.up(stack, secrets(ACCESS_KEY, SECRET_KEY)) == [], "the same config again: nothing to do"

    # Rotate: the store gets a second key; `up` with it rewrites the two files and restarts the servers.
    rgw.admin("key", "create", "--uid=test", f"--access-key={ROTATED[0]}", f"--secret-key={ROTATED[1]}")
    pids = {host.name: main_pid(host) for host in (first, edge)}
    rotated = deploy.up(stack, secrets(*ROTATED))
    assert sorted(on_hosts(rotated)) == [("cache-s3-credentials", "update"), ("edge-s3-credentials", "update")]
    for host in (first, edge):
        assert main_pid(host) != pids[host.name], "the server restarted to read the new key"
        assert ROTATED[0] in host.ssh(f"cat {CREDENTIALS}").stdout
    rgw.admin("key", "rm", "--uid=test", f"--access-key={ACCESS_KEY}")  # the old key stops working
    assert http(f"{urls['edge']}/v1/cache/4402", token, b"after rotation", "PUT")[0] == 200
    assert http(f"{urls['cache']}/v1/cache/4402", token) == (200, b"after rotation")

    # A key the store refuses: the step fails with the store's answer, the working key stays in use.
    kept = {host.name: host.ssh(f"sha256sum {CREDENTIALS}").stdout for host in (first, edge)}
    with pytest.raises(StepFailed) as refused:
        deploy.up(stack, secrets(ROTATED[0], "not-the-secret-Zz91"))
    assert set(refused.value.failures) == {"cache-s3-credentials", "edge-s3-credentials"}
    message = str(refused.value)
    assert "credentials are wrong" in message and "the previous ones are back in use" in message, message
    assert "not-the-secret-Zz91" not in message
    for host in (first, edge):
        assert host.ssh(f"sha256sum {CREDENTIALS}").stdout == kept[host.name]
    for url in urls.values():
        wait_healthy(url)
    assert http(f"{urls['cache']}/v1/cache/4403", token, b"still storing", "PUT")[0] == 200
    assert http(f"{urls['edge']}/v1/cache/4403", token) == (200, b"still storing")

    destroyed = deploy.destroy()
    assert ("edge-s3-credentials", "delete") in destroyed and ("cache-service", "delete") in destroyed
    for host in (first, edge):
        assert host.ssh(f"ls {CREDENTIALS}* 2>/dev/null || true").stdout.strip() == ""
    rgw.admin("key", "create", "--uid=test", f"--access-key={ACCESS_KEY}", f"--secret-key={SECRET_KEY}")  # to look
    assert set(rgw.objects("farm/")) == {"farm/4401", "farm/4402", "farm/4403"}, "destroy leaves the bucket alone"
