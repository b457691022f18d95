"""TailnetPolicy: one `tailscale.Acl` holding the operator's policy plus the farm's entries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_tailscale as tailscale


@dataclass(frozen=True, kw_only=True)
class TailnetPolicyArgs:
    """+ policy: the merged policy (render.tailnet_policy.build_policy), built before any resource
    + overwrite_existing: let the first `pulumi up` replace a policy that is not Tailscale's default
      (the provider otherwise refuses: "Overwrite Protected"; see docs/how-to/adopt-a-tailnet-policy.md)
    """

    policy: dict[str, Any]
    overwrite_existing: bool = False


class TailnetPolicy(pulumi.ComponentResource):
    acl: tailscale.Acl

    def __init__(self, name: str, args: TailnetPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("nxfarm:index:TailnetPolicy", name, None, opts)
        # The Acl owns the whole policy file; build_policy kept every section of the operator's base.
        self.acl = tailscale.Acl(
            f"{name}-acl",
            acl=json.dumps(args.policy, indent=2),
            overwrite_existing_content=args.overwrite_existing,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"aclId": self.acl.id})
