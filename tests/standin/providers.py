"""Providers for the engine stand-in: what each resource type does when the engine steps it.

`RemoteCommands` follows pulumi-command v1.2.1 (provider/pkg/provider/remote/commandController.go,
copyController.go, copy.go; common/inputs.go):
  * Command: create runs `create`; any input change but `triggers` is an update that runs
    `update`, or `create` when there is none, over the *new* connection; a `triggers` change
    replaces; delete runs the old state's `delete` over the old connection. Nothing runs
    without the command set.
  * CopyToRemote: create copies; an update copies only when the source's hash or `remotePath`
    changed (not on a new `connection`); `triggers` replaces; there is no delete. A source
    directory whose path ends in "/" copies its contents into `remotePath`.
  * Both connect with the pinned host key and fail on a mismatch, and reach the host only if
    the tailnet policy in force lets the operator open tcp:22 to it.
Not modelled: the provider's own SSH and SFTP code (scp and ssh stand in), `environment`,
`logging`, `dialErrorLimit` retries, proxies.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path
from typing import Any

from tests.hosts.testhosts import TestHost

from .engine import Live
from .tailnet import Tailnet


class RemoteCommands:
    def __init__(self, hosts: list[TestHost], tailnet: Tailnet | None = None) -> None:
        self.hosts = {host.ip: host for host in hosts}
        self.tailnet = tailnet

    def _host(self, connection: dict[str, Any]) -> TestHost:
        address = connection["host"]
        if self.tailnet is not None:
            self.tailnet.check_ssh(address, int(connection.get("port", 22)))
        host = self.hosts.get(address)
        if host is None:
            raise ConnectionError(f"dial tcp {address}:22: i/o timeout (no host there)")
        pinned = connection.get("hostKey")
        if pinned and pinned.split()[:2] != host.host_key.split()[:2]:
            raise ConnectionError(f"ssh: handshake failed: knownhosts: key mismatch for {address}")
        return host

    def replaces(self, typ: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        return old.get("triggers") != new.get("triggers")

    def create(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if typ == "command:remote:CopyToRemote":
            self._copy(inputs)
            return {}
        return self._run(inputs, inputs.get("create"))

    def update(self, old: Live, inputs: dict[str, Any]) -> dict[str, Any]:
        if old.typ == "command:remote:CopyToRemote":
            if old.inputs["source"] != inputs["source"] or old.inputs["remotePath"] != inputs["remotePath"]:
                self._copy(inputs)
            return {}
        return self._run(inputs, inputs.get("update") or inputs.get("create"), old.outputs)

    def delete(self, old: Live) -> None:
        if old.typ == "command:remote:Command" and old.inputs.get("delete"):
            self._run(old.inputs, old.inputs["delete"])

    def _run(self, inputs: dict[str, Any], command: str | None, previous: dict[str, Any] | None = None) -> dict[str, Any]:
        if not command:
            return dict(previous or {})
        host = self._host(inputs["connection"])
        result = host.ssh(command, stdin=inputs.get("stdin") or "", check=False)
        if result.returncode != 0:
            raise RuntimeError(f"Process exited with status {result.returncode}: running {command[:300]!r}:\n"
                               f"{result.stdout[-1500:]}{result.stderr[-1500:]}")
        return {"stdout": result.stdout.rstrip("\n"), "stderr": result.stderr.rstrip("\n")}

    def _copy(self, inputs: dict[str, Any]) -> None:
        host = self._host(inputs["connection"])
        kind, path = inputs["source"][0], inputs["source"][1]
        if kind != "FileArchive" or not path.endswith("/"):
            raise NotImplementedError(f"this stand-in copies directory contents only, not {inputs['source']}")
        host.ssh(f"mkdir -p {shlex.quote(inputs['remotePath'])}")
        for item in sorted(Path(path).iterdir()):
            host.copy(item, inputs["remotePath"] + "/")


class LocalCommands:
    """pulumi-command local.Command: the harness already ran create/update while the program ran
    (in `local_dir`); a delete runs here, in that directory, as the provider runs it in `dir`."""

    def __init__(self, local_dir: Path | None) -> None:
        self.local_dir = local_dir

    def replaces(self, typ: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        return old.get("triggers") != new.get("triggers")

    def create(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return {}

    def update(self, old: Live, inputs: dict[str, Any]) -> dict[str, Any]:
        return {}

    def delete(self, old: Live) -> None:
        if self.local_dir is not None and old.inputs.get("delete"):
            subprocess.run(["sh", "-c", old.inputs["delete"]], cwd=self.local_dir, check=True, capture_output=True)


class TailscaleResources:
    """pulumi-tailscale 0.29.2 Acl, DeviceTags and DeviceKey against the tailnet stand-in
    (semantics and sources in tests/standin/tailnet.py). `device_id` requires replacement
    (stringplanmodifier.RequiresReplace in resource_device_tags.go and resource_device_key.go)."""

    def __init__(self, tailnet: Tailnet) -> None:
        self.tailnet = tailnet

    def replaces(self, typ: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        return "deviceId" in new and old.get("deviceId") != new.get("deviceId")

    def create(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return self._apply(typ, inputs, creating=True)

    def update(self, old: Live, inputs: dict[str, Any]) -> dict[str, Any]:
        return self._apply(old.typ, inputs, creating=False)

    def _apply(self, typ: str, inputs: dict[str, Any], creating: bool) -> dict[str, Any]:
        if typ == "tailscale:index/acl:Acl":
            overwrite = bool(inputs.get("overwriteExistingContent"))
            self.tailnet.set_policy(json.loads(inputs["acl"]),
                                    if_match="ts-default" if creating and not overwrite else None)
        elif typ == "tailscale:index/deviceTags:DeviceTags":
            self.tailnet.set_tags(inputs["deviceId"], list(inputs["tags"]))
        elif typ == "tailscale:index/deviceKey:DeviceKey":
            self.tailnet.set_key(inputs["deviceId"], bool(inputs.get("keyExpiryDisabled")))
        else:
            raise NotImplementedError(typ)
        return {}

    def delete(self, old: Live) -> None:
        if old.typ == "tailscale:index/acl:Acl":
            if old.inputs.get("resetAclOnDestroy"):
                self.tailnet.policy = None
        elif old.typ == "tailscale:index/deviceTags:DeviceTags":
            self.tailnet.set_tags(old.inputs["deviceId"], [])
        elif old.typ == "tailscale:index/deviceKey:DeviceKey":
            self.tailnet.set_key(old.inputs["deviceId"], False)


class Computed:
    """Resources whose values the harness's mocks computed (random, tls): nothing to do on a host."""

    def replaces(self, typ: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        return typ.startswith("random:") and old.get("keepers") != new.get("keepers")

    def create(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return {}

    def update(self, old: Live, inputs: dict[str, Any]) -> dict[str, Any]:
        return {}

    def delete(self, old: Live) -> None:
        return None


def providers(hosts: list[TestHost], tailnet: Tailnet, local_dir: Path | None) -> dict[str, Any]:
    return {"command:remote:": RemoteCommands(hosts, tailnet), "command:local:": LocalCommands(local_dir),
            "tailscale:": TailscaleResources(tailnet), "random:": Computed(), "tls:": Computed()}
