"""The tailnet policy: the operator's base policy plus exactly what the farm needs.

`tailscale.Acl` owns the whole policy file, so the farm's entries are merged into the
operator's own (HuJSON) policy and nothing of it is ever dropped: unknown sections pass
through untouched, lists are appended to, `tagOwners` and `autoApprovers` are merged.
A `tests` section asserts every path the farm opens and denies the nearby ones it does not,
so Tailscale rejects a policy that drifts (tests run on every policy change).
"""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import json5

from ..settings import FarmSettings, is_tailnet_address

CACHE_PORT_DEFAULT = 3333
WORKER_PORT = 8789  # Dask workers listen here on agents (nxfarm agent run; see the distributed-build issue)
SSH_PORT = 22
DASHBOARD_PORT = 8787  # the scheduler's dashboard: on the cache host's 127.0.0.1 only, never granted
PAGES_PORT = 8790  # the run pages (components/render/scheduler.py): operators and orchestrators, not agents


class PolicyError(ValueError):
    """The base policy cannot be merged (names the section)."""


def parse_hujson(text: str, source: str) -> dict[str, Any]:
    try:
        value = json5.loads(text)
    except ValueError as exc:
        raise PolicyError(f"{source}: not valid HuJSON: {exc}") from None
    if not isinstance(value, dict):
        raise PolicyError(f"{source}: the policy must be an object")
    return value


def _tcp(*ports: int) -> list[str]:
    return [f"tcp:{port}" for port in ports]


def farm_tags(settings: FarmSettings) -> list[str]:
    tailnet = settings.tailnet
    extra = sorted({tag for agent in settings.agents for tag in agent.tags}
                   | {router.tag for router in tailnet.subnet_routers if router.tag} - {tailnet.agent_tag})
    return [tailnet.agent_tag, tailnet.cache_tag, tailnet.orchestrator_tag, *extra]


def routed_agents(settings: FarmSettings) -> list[str]:
    """The addresses (as /32 or /128 prefixes) of agents reached through a subnet router's routes."""
    routes = [ipaddress.ip_network(route) for router in settings.tailnet.subnet_routers for route in router.routes]
    out = []
    for agent in settings.agents:
        try:
            address = ipaddress.ip_address(agent.host)
        except ValueError:
            continue
        if any(address.version == route.version and address in route for route in routes):
            out.append(str(ipaddress.ip_network(address)))
    return out


def cache_ports(settings: FarmSettings) -> list[int]:
    """The port of every cache host (frontends may differ), each once, in declaration order."""
    return list(dict.fromkeys(host.port for host in settings.cache_hosts))


def store_host(settings: FarmSettings) -> str:
    storage = settings.cache_host.storage
    return "" if storage is None else storage.host_and_port[0]


def store_on_tailnet(settings: FarmSettings) -> str | None:
    """`ip:port` of the S3 store when its endpoint is a tailnet address (cache hosts then need a
    grant to reach it); None for disk storage or a store reached otherwise (LAN, a DNS name)."""
    storage = settings.cache_host.storage
    if storage is None or not is_tailnet_address(storage.host_and_port[0]):
        return None
    host, port = storage.host_and_port
    return f"{host}:{port}"


def farm_grants(settings: FarmSettings) -> list[dict[str, Any]]:
    t = settings.tailnet
    cache = _tcp(*cache_ports(settings))
    grants = [
        # agents upload to and read from every cache host, and join the scheduler
        {"src": [t.agent_tag], "dst": [t.cache_tag], "ip": [*cache, *_tcp(t.scheduler_port)]},
        # orchestrators (dev boxes, CI) replay from the cache, submit to the scheduler and read the run pages
        {"src": [t.orchestrator_tag, *t.operators], "dst": [t.cache_tag],
         "ip": [*cache, *_tcp(t.scheduler_port, PAGES_PORT)]},
        # the scheduler (on the cache host) reaches the workers
        {"src": [t.cache_tag], "dst": [t.agent_tag], "ip": _tcp(WORKER_PORT)},
        # operators deploy over SSH
        {"src": list(t.operators), "dst": [t.agent_tag, t.cache_tag], "ip": _tcp(SSH_PORT)},
    ]
    routed = routed_agents(settings)
    if routed:
        # agents behind a subnet router, each by its own address: not the whole routed network
        grants.append({"src": [t.cache_tag], "dst": routed, "ip": _tcp(WORKER_PORT)})
        grants.append({"src": list(t.operators), "dst": routed, "ip": _tcp(SSH_PORT)})
    store = store_on_tailnet(settings)
    if store:
        # the cache hosts store in the S3 bucket: that address and port only
        host, port = store.rsplit(":", 1)
        grants.append({"src": [t.cache_tag], "dst": [host], "ip": _tcp(int(port))})
    return grants


def farm_ssh(settings: FarmSettings) -> list[dict[str, Any]]:
    """Tailscale SSH (for hosts that run `tailscale up --ssh`): operators may log in as the users the
    deploy connects as (`sshUser`), not as the farm's service user, which has no login shell."""
    t = settings.tailnet
    users = sorted({*(host.ssh_user for host in settings.cache_hosts), *(agent.ssh_user for agent in settings.agents)})
    return [{"action": "accept", "src": list(t.operators), "dst": [t.agent_tag, t.cache_tag], "users": users}]


def farm_tests(settings: FarmSettings) -> list[dict[str, Any]]:
    """One test per farm identity: what it must reach, and the neighbours it must not."""
    t = settings.tailnet
    cache, agent, orch = t.cache_tag, t.agent_tag, t.orchestrator_tag
    ports, sched = cache_ports(settings), t.scheduler_port
    cache_port = ports[0]
    every_cache = [f"{cache}:{port}" for port in ports]
    dash = DASHBOARD_PORT
    # An IPv6 store gets its grant but no test line: a test's `host:port` is not written down for IPv6.
    store = store_on_tailnet(settings) if ":" not in store_host(settings) else None
    tests: list[dict[str, Any]] = [
        {"src": agent, "proto": "tcp", "accept": [*every_cache, f"{cache}:{sched}"],
         "deny": [f"{cache}:{SSH_PORT}", f"{cache}:{dash}", f"{cache}:{PAGES_PORT}", f"{agent}:{WORKER_PORT}", f"{agent}:{SSH_PORT}",
                  f"{orch}:{SSH_PORT}", f"{orch}:{cache_port}", f"{orch}:{WORKER_PORT}", *([store] if store else [])]},
        {"src": orch, "proto": "tcp", "accept": [*every_cache, f"{cache}:{sched}", f"{cache}:{PAGES_PORT}"],
         "deny": [f"{cache}:{SSH_PORT}", f"{cache}:{dash}", f"{agent}:{SSH_PORT}", f"{agent}:{WORKER_PORT}",
                  f"{orch}:{SSH_PORT}", *([store] if store else [])]},
        {"src": cache, "proto": "tcp", "accept": [f"{agent}:{WORKER_PORT}", *([store] if store else [])],
         "deny": [f"{agent}:{SSH_PORT}", f"{agent}:{cache_port}", f"{orch}:{SSH_PORT}", f"{orch}:{cache_port}",
                  f"{orch}:{WORKER_PORT}"]},
    ]
    for who in t.operators:
        if who.startswith("autogroup:"):
            continue  # tests take a user, group, tag or host as src
        tests.append({"src": who, "proto": "tcp",
                      "accept": [f"{agent}:{SSH_PORT}", f"{cache}:{SSH_PORT}", *every_cache, f"{cache}:{sched}",
                                 f"{cache}:{PAGES_PORT}"]})
    return tests


def build_policy(base: dict[str, Any], settings: FarmSettings) -> dict[str, Any]:
    """The base policy with the farm's tagOwners, grants, ssh, autoApprovers and tests merged in."""
    policy = copy.deepcopy(base)
    t = settings.tailnet

    owners = policy.setdefault("tagOwners", {})
    if not isinstance(owners, dict):
        raise PolicyError("tagOwners must be an object")
    for tag in farm_tags(settings):
        current = owners.setdefault(tag, [])
        current.extend(who for who in t.operators if who not in current)

    for section, entries in (("grants", farm_grants(settings)), ("ssh", farm_ssh(settings)),
                             ("tests", farm_tests(settings))):
        existing = policy.setdefault(section, [])
        if not isinstance(existing, list):
            raise PolicyError(f"{section} must be a list")
        existing.extend(entry for entry in entries if entry not in existing)

    if any(router.tag for router in t.subnet_routers):
        # Only the router's own tag may have its routes approved without an operator.
        approvers = policy.setdefault("autoApprovers", {})
        routes = approvers.setdefault("routes", {})
        for router in t.subnet_routers:
            for route in router.routes if router.tag else ():
                current = routes.setdefault(route, [])
                if router.tag not in current:
                    current.append(router.tag)
    unowned = sorted(referenced_tags(policy) - set(owners))
    if unowned:
        # Tailscale refuses the whole policy ("tag not found") when `pulumi up` sets it; say so at preview.
        raise PolicyError(f"{settings.tailnet.base_policy_file}: {', '.join(unowned)} used but not in tagOwners: "
                          "add an owner for each (Tailscale refuses a policy that uses an undefined tag)")
    return policy


def referenced_tags(policy: dict[str, Any]) -> set[str]:
    """Every tag a rule, test or auto-approver names (`tag:x`, also as `tag:x:port`)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.startswith("tag:"):
            found.add(":".join(value.split(":")[:2]))
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(key)
                walk(item)

    for section in ("grants", "acls", "ssh", "tests", "sshTests", "autoApprovers", "nodeAttrs"):
        walk(policy.get(section, []))
    for owners in policy.get("tagOwners", {}).values():
        walk(owners)
    return found
