"""Tailnet device settings shared by the cache host and the agents."""

from __future__ import annotations

import pulumi
import pulumi_tailscale as tailscale


def tag_device(name: str, *, hostname: str, tags: list[str], acl: pulumi.Resource,
               parent: pulumi.Resource) -> tuple[tailscale.DeviceTags, tailscale.DeviceKey]:
    """Tag the device and turn off key expiry, after the policy that defines the tags exists."""
    device = tailscale.get_device_output(hostname=hostname)
    after_acl = pulumi.ResourceOptions(parent=parent, depends_on=[acl])
    device_tags = tailscale.DeviceTags(f"{name}-tags", device_id=device.node_id, tags=tags, opts=after_acl)
    device_key = tailscale.DeviceKey(f"{name}-key", device_id=device.node_id, key_expiry_disabled=True,
                                     opts=after_acl)
    return device_tags, device_key
