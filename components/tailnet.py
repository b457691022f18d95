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
    + adopt_existing: overwrite a tailnet whose policy is not the default one (first `pulumi up`)
    """

    policy: dict[str, Any]
    adopt_existing: bool = True


class TailnetPolicy(pulumi.ComponentResource):
    acl: tailscale.Acl

    def __init__(self, name: str, args: TailnetPolicyArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("nxfarm:index:TailnetPolicy", name, None, opts)
        # The Acl owns the whole policy file; build_policy kept every section of the operator's base.
        self.acl = tailscale.Acl(
            f"{name}-acl",
            acl=json.dumps(args.policy, indent=2),
            overwrite_existing_content=args.adopt_existing,
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({"aclId": self.acl.id})
