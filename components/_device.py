"""Tailnet device settings shared by the cache host and the agents.

A host's device is found by its tailnet address (the `host` the deploy connects to), never by
its OS hostname: two devices can share a hostname (a reinstalled machine), and a host's name in
the stack is a resource name, not necessarily its hostname. Hosts that are not tailnet devices
(behind a subnet router) get no device settings at all.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_tailscale as tailscale

from .settings import SshTarget


class DeviceNotFound(Exception):
    """No tailnet device has the host's address."""


def device_id_at(devices: list[Any], address: str, where: str) -> str:
    """The node ID of the one device whose addresses include `address`."""
    found = [d for d in devices if address in list(d.addresses)]
    if not found:
        raise DeviceNotFound(
            f"{where}.host: no tailnet device has the address {address}: enroll the machine "
            f"(`tailscale up --advertise-tags=...`, see docs/how-to/add-an-agent.md), or set "
            f"{where}.tailnetDevice: false if it is reached through a subnet router")
    return found[0].node_id


def tag_device(name: str, *, target: SshTarget, where: str, tags: list[str], acl: pulumi.Resource,
               parent: pulumi.Resource) -> list[pulumi.Resource]:
    """Tag the host's device and turn off its key expiry, after the policy that defines the tags.

    Returns what every step on the host must wait for: the device's tags (operators reach tagged
    hosts only), or the policy itself for a host that is not a tailnet device (its subnet route
    grant comes with the policy)."""
    if not target.is_tailnet_device:
        return [acl]
    devices = tailscale.get_devices_output()
    node_id = devices.devices.apply(lambda found: device_id_at(found, target.host, where))
    # Both are retained when the host leaves the stack. Tailscale cannot take tags off a device
    # without re-authorizing it, so DeviceTags' delete (SetTags(id, [])) would fail; and DeviceKey's
    # delete turns key expiry back on, which after a rename (new name, same device) would undo what
    # the new name just set. A removed host keeps both until its device is deleted or re-enrolled.
    kept = pulumi.ResourceOptions(parent=parent, depends_on=[acl], retain_on_delete=True)
    device_tags = tailscale.DeviceTags(f"{name}-tags", device_id=node_id, tags=tags, opts=kept)
    tailscale.DeviceKey(f"{name}-key", device_id=node_id, key_expiry_disabled=True, opts=kept)
    return [device_tags]
