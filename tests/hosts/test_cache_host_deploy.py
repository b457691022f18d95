"""The program's CacheHost, deployed on a throwaway systemd host by executing the commands it declares
(see tests/hosts/deploy.py and tests/standin for what stands in for the engine and the providers)."""

import json
import time
import urllib.error
import urllib.request

from tests.components.pulumi_harness import mock_token

from .deploy import Deployment, enroll, on_hosts, orchestrator_security


def config(host, operator, **overrides):
    return {"cacheHost": {"name": "cache", "host": host.ip, "hostKey": host.host_key, "tailnetDevice": True},
            "sops": {"operatorRecipients": [operator]}, "trust": {"repositories": ["https://git.example/*"]},
            "orchestrators": [{"name": "operator", "tier": "trusted"}], **overrides}


def http(url, token=None, data=None, method="GET"):
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def check_scheduler(host, run):
    """The deployed scheduler listens on the host's address only and speaks mutual TLS with
    certificates of the farm's CA (connecting as the stack's orchestrator), its dashboard on 127.0.0.1 only."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        listening = host.ssh("ss -Hltn").stdout.split("\n")
        local = {line.split()[3] for line in listening if line.strip()}
        if {f"{host.ip}:8786", "127.0.0.1:8787", f"{host.ip}:8790"} <= local:
            break
        time.sleep(0.5)
    assert {f"{host.ip}:8786", "127.0.0.1:8787"} <= local, local
    assert f"{host.ip}:8787" not in local, "the dashboard has no authentication: never on the tailnet address"
    assert not [a for a in local if a.startswith(("0.0.0.0:", "*:", "[::]:")) and a.endswith((":8786", ":8787"))]
    from distributed import Client

    deadline = time.monotonic() + 30
    while True:
        try:
            with Client(f"tls://{host.ip}:8786", security=orchestrator_security(run), timeout=5,
                        set_as_default=False) as client:
                assert client.scheduler_info()["workers"] == {}
                check_run_store(host, client)
                break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def check_run_store(host, client):
    """A build's report reaches the deployed scheduler's run store, a SQLite file in its state
    directory (writable under the unit's ProtectSystem=strict), under its certificate's name."""
    import secrets

    from nxfarm.runs.report import RunReport

    count = ("import os, sqlite3\npath = '/var/lib/nx-farm-scheduler/runs.sqlite'\n"
             "print(sqlite3.connect(path).execute(\"select count(*) from runs where orchestrator = "
             "'orchestrator-operator'\").fetchone()[0] if os.path.exists(path) else 0)\n")
    before = int(host.ssh("python3 -", stdin=count).stdout)
    report = RunReport(secrets.token_hex(16), "run-many -t build", "", "local", "asked", 1.0, 2.0, 0)
    assert client.sync(client.scheduler.nxfarm_report_run, report=report.to_json()) == {"status": "OK", "stored": True}
    assert int(host.ssh("python3 -", stdin=count).stdout) == before + 1
    status, page = http(f"http://{host.ip}:8790/runs/{report.run_id}")  # the run pages, on the host's address
    assert status == 200 and b"run-many -t build" in page


def test_cache_host_lifecycle_on_a_real_host(start_host, built_wheels, monkeypatch, tmp_path):
    monkeypatch.setenv("NXFARM_WHEELS_DIR", str(built_wheels))
    host = start_host("cache1", "10.231.0.11")
    deploy = Deployment(tmp_path, [host], enroll({"cache": host}), seed=0)
    url = f"http://{host.ip}:3333"

    first = deploy.up(config(host, deploy.operator_recipient))
    run = deploy.run
    assert run.by_name()["cache-service"].depends_on >= {"cache-wheels", "cache-tokens"}
    assert on_hosts(first) == [("cache-preflight", "create"), ("cache-scheduler-health", "create"),
                               ("cache-scheduler-service", "create"), ("cache-scheduler-tls", "create"),
                               ("cache-scheduler-unit-nx-farm-health-service", "create"),
                               ("cache-scheduler-unit-nx-farm-health-timer", "create"),
                               ("cache-scheduler-wheels", "create"), ("cache-service", "create"),
                               ("cache-tokens", "create"), ("cache-wheels", "create")]
    assert host.ssh("systemctl is-active nx-farm-health.timer").stdout.strip() == "active"
    for service in ("cache-service", "cache-scheduler-service"):
        before = [name for name, _ in first[:first.index((service, "create"))]]
        assert set(run.by_name()[service].depends_on) & {n for n, _ in first} <= set(before), \
            "a service is installed after what it depends on"
    assert deploy.stdout("cache-service").strip().endswith("changed")
    assert deploy.stdout("cache-preflight").startswith("ok: python 3.11, x86_64")
    status, body = http(f"{url}/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    token = mock_token("cache-token-operator", {"generation": "1"})
    assert http(f"{url}/v1/cache/123", token, b"artifact", "PUT")[0] == 200
    assert http(f"{url}/v1/cache/123", token) == (200, b"artifact")
    assert http(f"{url}/v1/cache/123", "wrong")[0] == 401
    assert token not in host.ssh("cat /etc/nx-farm/cache-tokens").stdout
    assert host.ssh("systemctl show -p User --value nx-farm-cache").stdout.strip() == "nxfarm-cache"
    pid = host.ssh("systemctl show -p MainPID --value nx-farm-cache.service").stdout.strip()
    # cacheHost.workers defaults to auto: one server process per core of the host.
    cores = min(8, int(host.ssh("nproc").stdout))
    workers = host.ssh(f"cat /proc/{pid}/task/{pid}/children").stdout.split()
    assert len(workers) == (cores if cores > 1 else 0)
    check_scheduler(host, run)

    # The same config again: nothing to do, and a forced re-run of the install changes nothing.
    assert deploy.up(config(host, deploy.operator_recipient)) == []
    state = deploy.engine.state["cache-service"].inputs
    rerun = host.ssh(state["update"], stdin=state["stdin"])
    assert rerun.stdout.strip().endswith("unchanged")
    assert host.ssh("systemctl show -p MainPID --value nx-farm-cache.service").stdout.strip() == pid

    # Rotate: only the tokens file is rewritten; the old token is refused at once, the server keeps running.
    rotated = deploy.up(config(host, deploy.operator_recipient, secretsGeneration=2))
    # ... and the cluster's certificates: the scheduler gets its new ones (and restarts).
    assert on_hosts(rotated) == [("cache-scheduler-tls", "update"), ("cache-tokens", "update")]
    new_token = mock_token("cache-token-operator", {"generation": "2"})
    deadline = time.monotonic() + 5
    while http(f"{url}/v1/cache/123", token)[0] != 401 and time.monotonic() < deadline:
        time.sleep(0.1)
    # Every worker reloads: fresh connections reach them all.
    deadline = time.monotonic() + 5
    while any(http(f"{url}/v1/cache/123", token)[0] != 401 for _ in range(12)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(http(f"{url}/v1/cache/123", token)[0] == 401 for _ in range(12))
    assert all(http(f"{url}/v1/cache/123", new_token) == (200, b"artifact") for _ in range(12))
    assert host.ssh("systemctl show -p MainPID --value nx-farm-cache.service").stdout.strip() == pid
    check_scheduler(host, deploy.run)

    # Destroy without purgeOnDestroy: the service goes, the cached data stays.
    assert ("cache-service", "delete") in deploy.destroy()
    assert host.ssh("systemctl is-active nx-farm-cache.service", check=False).stdout.strip() in ("inactive", "unknown")
    assert host.ssh("test -e /etc/systemd/system/nx-farm-cache.service", check=False).returncode != 0
    assert host.ssh("ls /var/lib/nx-farm/cache/entries/12/").stdout.split() == ["123"]
