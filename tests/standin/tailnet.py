"""A stand-in for one tailnet as the Pulumi program sees it through pulumi-tailscale 0.29.2.

Modelled from terraform-provider-tailscale v0.29.2 (the provider pulumi-tailscale 0.29.2 bridges):
  * `get_device(hostname=)`: lists devices filtered by hostname and takes the first; none is the
    error `could not find device with hostname="..."` (tailscale/data_source_device.go, Read).
  * `get_devices(name_prefix=)`: every device, filtered by name prefix on the client side
    (tailscale/data_source_devices.go, Read).
  * `DeviceTags`: create/update `SetTags(id, tags)`; delete `SetTags(id, [])`, which Tailscale
    refuses for a tagged device ("Tags cannot be removed without reauthorizing the device as a
    user", tailscale/resource_device_tags.go, Delete). Tags must be owned in the policy in force
    (the API answers 400 "requested tags [...] are invalid or not permitted").
  * `DeviceKey`: `SetKey(id, {keyExpiryDisabled})`; delete sets it back to false
    (tailscale/resource_device_key.go).
  * `Acl`: create sends `If-Match: "ts-default"` unless `overwrite_existing_content`, so it fails
    with "Overwrite Protected" on a tailnet whose policy is not the default; update posts
    unconditionally; delete leaves the policy alone unless `reset_acl_on_destroy`
    (tailscale/resource_acl.go). Tailscale validates a policy when it is set: every tag used
    must be in `tagOwners` ("tag not found"), and every `tests` entry must hold.

Connectivity is decided by the policy in force: grants and legacy acls, from the operator's
identity (login, groups, autogroups) to a device's current tags and addresses, or to an address
behind an approved subnet route. Not modelled: Tailscale SSH (`ssh` rules), posture, `via`,
`hosts` aliases pointing at CIDRs in tests, ipsets, autogroup:self, device approval.
"""

from __future__ import annotations

import copy
import ipaddress
import hashlib
import threading
from dataclasses import dataclass, field
from typing import Any

from components.settings import is_tailnet_address

# Tailscale's default policy: everyone may reach everything.
DEFAULT_POLICY: dict[str, Any] = {"acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}]}


class TailnetError(Exception):
    """What the Tailscale API (through the provider) answers to a refused request."""


@dataclass
class Device:
    hostname: str  # the OS hostname, as `get_device(hostname=)` matches it
    addresses: list[str]
    tags: list[str] = field(default_factory=list)
    user: str = "alice@example.com"  # the login that enrolled it (untagged devices belong to it)
    key_expiry_disabled: bool = False
    routes: list[str] = field(default_factory=list)  # advertised and approved subnet routes
    node_id: str = ""  # stable per hostname and first address unless given (a re-enrolled machine gets a new one)

    def __post_init__(self) -> None:
        if not self.node_id:
            seed = f"{self.hostname}|{self.addresses[0] if self.addresses else ''}"
            self.node_id = "n" + hashlib.sha256(seed.encode()).hexdigest()[:10] + "CNTRL"

    @property
    def name(self) -> str:
        return f"{self.hostname}.example-tailnet.ts.net"

    def as_result(self) -> dict[str, Any]:
        """The device as the provider's data sources return it (camelCase wire names)."""
        return {"addresses": list(self.addresses), "authorized": True, "blocksIncomingConnections": False,
                "clientVersion": "1.90.0", "created": "2026-01-01T00:00:00Z", "expires": "",
                "hostname": self.hostname, "id": self.node_id, "isExternal": False,
                "keyExpiryDisabled": self.key_expiry_disabled, "lastSeen": "", "machineKey": "",
                "name": self.name, "nodeId": self.node_id, "nodeKey": "", "os": "linux", "tags": list(self.tags),
                "tailnetLockError": "", "tailnetLockKey": "", "updateAvailable": False, "user": self.user}


@dataclass
class Operator:
    login: str = "alice@example.com"
    admin: bool = True  # autogroup:admin


class Tailnet:
    """Devices and the policy in force; thread-safe, since the engine stand-in runs steps at once."""

    def __init__(self, devices: list[Device] | None = None, policy: dict[str, Any] | None = None,
                 operator: Operator | None = None) -> None:
        self.devices = list(devices or [])
        self.policy = copy.deepcopy(policy) if policy is not None else None  # None: the default policy
        self.operator = operator or Operator()
        self.lock = threading.RLock()

    # -- data sources --------------------------------------------------------------------------
    def get_device(self, hostname: str | None = None, name: str | None = None) -> dict[str, Any]:
        with self.lock:
            if hostname is not None:
                found = [d for d in self.devices if d.hostname == hostname]
                desc = f"hostname={hostname!r}".replace("'", '"')
            else:
                found = [d for d in self.devices if d.name == name]
                desc = f"name={name!r}".replace("'", '"')
            if not found:
                raise TailnetError(f"Failed to fetch devices: could not find device with {desc}")
            return found[0].as_result()

    def get_devices(self, name_prefix: str | None = None) -> list[dict[str, Any]]:
        with self.lock:
            return [d.as_result() for d in self.devices if not name_prefix or d.name.startswith(name_prefix)]

    def device(self, node_id: str) -> Device:
        for device in self.devices:
            if device.node_id == node_id:
                return device
        raise TailnetError(f"device {node_id} not found (404)")

    def device_at(self, address: str) -> Device | None:
        return next((d for d in self.devices if address in d.addresses), None)

    # -- resources -----------------------------------------------------------------------------
    def set_tags(self, node_id: str, tags: list[str]) -> None:
        with self.lock:
            device = self.device(node_id)
            if not tags and device.tags:
                raise TailnetError(f"Failed to delete tags for device with ID {node_id}: tags cannot be removed "
                                   "without reauthorizing the device as a user (400)")
            owners = self._policy().get("tagOwners", {})
            bad = [t for t in tags if t not in owners]
            if bad:
                raise TailnetError(f"requested tags {bad} are invalid or not permitted (400)")
            device.tags = sorted(tags)

    def set_key(self, node_id: str, key_expiry_disabled: bool) -> None:
        with self.lock:
            self.device(node_id).key_expiry_disabled = key_expiry_disabled

    def set_policy(self, policy: dict[str, Any], *, if_match: str | None) -> None:
        with self.lock:
            if if_match == "ts-default" and self.policy is not None:
                raise TailnetError("Overwrite Protected: You are trying to overwrite a non-default policy. "
                                   "Please import the ACL first or set overwrite_existing_content = true.")
            problems = validate_policy(policy)
            if problems:
                raise TailnetError("Failed to set ACL: " + "; ".join(problems))
            self.policy = copy.deepcopy(policy)

    # -- connectivity --------------------------------------------------------------------------
    def _policy(self) -> dict[str, Any]:
        return self.policy if self.policy is not None else DEFAULT_POLICY

    def operator_can_reach(self, address: str, port: int) -> bool:
        """May the operator's machine open tcp:port to this address under the policy in force?"""
        with self.lock:
            policy = self._policy()
            src = user_principals(policy, self.operator.login, self.operator.admin)
            device = self.device_at(address)
            if device is None and not any(_in(address, r) for d in self.devices for r in d.routes):
                return False  # neither a tailnet address nor behind an approved route
            return allowed(policy, src, _dst(device, address), port, "tcp")

    def check_ssh(self, address: str, port: int = 22) -> None:
        if not self.operator_can_reach(address, port):
            device = self.device_at(address)
            what = f"device {device.hostname} with tags {device.tags}" if device else "no tailnet device"
            raise TailnetError(f"tailnet policy in force denies {self.operator.login} -> {address}:{port} "
                               f"({what}): the connection times out")


# -- policy evaluation -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    tags: tuple[str, ...]
    user: str | None  # owner of an untagged device
    address: str | None


def _dst(device: Device | None, address: str) -> Target:
    if device is None:
        return Target((), None, address)
    return Target(tuple(device.tags), None if device.tags else device.user, address)


def _in(address: str, network: str) -> bool:
    try:
        return ipaddress.ip_address(address) in ipaddress.ip_network(network, strict=False)
    except ValueError:
        return False


def user_principals(policy: dict[str, Any], login: str, admin: bool = False) -> set[str]:
    found = {"*", login, "autogroup:member"}
    if admin:
        found.add("autogroup:admin")
    found.update(g for g, members in policy.get("groups", {}).items() if login in members)
    return found


def _matches_dst(policy: dict[str, Any], selector: str, target: Target) -> bool:
    hosts = policy.get("hosts", {})
    if selector == "*":
        return True
    if selector.startswith("tag:"):
        return selector in target.tags
    if selector.startswith("group:"):
        return target.user is not None and target.user in policy.get("groups", {}).get(selector, [])
    if selector == "autogroup:member":
        return target.user is not None
    if selector in hosts:
        selector = hosts[selector]
    if "@" in selector:
        return target.user == selector
    return target.address is not None and _in(target.address, selector)


def _port_matches(spec: str, port: int) -> bool:
    if spec == "*":
        return True
    for part in spec.split(","):
        low, _, high = part.partition("-")
        if int(low) <= port <= int(high or low):
            return True
    return False


def _ip_matches(entry: str, port: int, proto: str) -> bool:
    if entry == "*":
        return True
    if ":" in entry:
        wanted, _, ports = entry.partition(":")
        return wanted in (proto, "*") and _port_matches(ports, port)
    return _port_matches(entry, port)


def allowed(policy: dict[str, Any], src: set[str], target: Target, port: int, proto: str = "tcp") -> bool:
    for grant in policy.get("grants", []):
        if src & set(grant.get("src", [])) and any(_matches_dst(policy, d, target) for d in grant.get("dst", [])) \
                and any(_ip_matches(e, port, proto) for e in grant.get("ip", [])):
            return True
    for acl in policy.get("acls", []):
        if acl.get("action", "accept") != "accept" or not src & set(acl.get("src", [])):
            continue
        if acl.get("proto") not in (None, proto):
            continue
        for dst in acl.get("dst", []):
            selector, _, ports = dst.rpartition(":")
            if _matches_dst(policy, selector, target) and _port_matches(ports, port):
                return True
    return False


def _referenced_tags(policy: dict[str, Any]) -> set[str]:
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.startswith("tag:"):
            found.add(value.split(":")[0] + ":" + value.split(":")[1])
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)

    for section in ("grants", "acls", "ssh", "tests", "autoApprovers"):
        walk(policy.get(section, []))
    for owners in policy.get("tagOwners", {}).values():
        walk(owners)
    return found


def _test_src(policy: dict[str, Any], src: str) -> set[str]:
    if src.startswith("tag:"):
        return {"*", src}
    if src.startswith("group:"):
        members = policy.get("groups", {}).get(src, [])
        return user_principals(policy, members[0]) if members else {"*", src, "autogroup:member"}
    return user_principals(policy, src)


def _test_dst(policy: dict[str, Any], dst: str) -> tuple[Target, int]:
    selector, _, port = dst.rpartition(":")
    if selector.startswith("tag:"):
        return Target((selector,), None, None), int(port)
    selector = policy.get("hosts", {}).get(selector, selector)
    if "@" in selector:
        return Target((), selector, None), int(port)
    return Target((), None, selector), int(port)


def validate_policy(policy: dict[str, Any]) -> list[str]:
    """What Tailscale refuses when the policy is set: unowned tags and failing tests."""
    problems = [f"tag not found: {tag!r} (no tagOwners entry)"
                for tag in sorted(_referenced_tags(policy) - set(policy.get("tagOwners", {})))]
    for test in policy.get("tests", []):
        src = _test_src(policy, test["src"])
        proto = test.get("proto", "tcp")
        for dst in test.get("accept", []):
            target, port = _test_dst(policy, dst)
            if not allowed(policy, src, target, port, proto):
                problems.append(f"test failed: {test['src']} should reach {dst}")
        for dst in test.get("deny", []):
            target, port = _test_dst(policy, dst)
            if allowed(policy, src, target, port, proto):
                problems.append(f"test failed: {test['src']} should not reach {dst}")
    return problems


def enrolled(config: dict[str, Any], policy: dict[str, Any] | None = None) -> Tailnet:
    """A tailnet where each host of a stack config that is a tailnet device (a tailnet address, or
    `tailnetDevice: true`) is enrolled, untagged, under its config name; one device per subnet
    router, its routes approved."""
    devices = []
    for host in [config.get("cacheHost", {}), *config.get("cacheFrontends", []), *config.get("agents", [])]:
        if "host" in host and host.get("tailnetDevice", is_tailnet_address(host["host"])):
            devices.append(Device(host.get("name", "host"), [host["host"]]))
    for i, router in enumerate(config.get("tailnet", {}).get("subnetRouters", [])):
        devices.append(Device(router["name"], [f"100.100.{i}.1"], routes=list(router["routes"])))
    return Tailnet(devices, policy)
