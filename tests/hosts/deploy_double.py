"""A stand-in for `pulumi up` with the pulumi-command provider, for resources a program run registered.

What it does, per resource, keyed by resource name (unique in this program), comparing the inputs
recorded by two runs of the program under Pulumi mocks:
  * new `remote.Command` -> run `create` over real SSH with `stdin`; changed inputs -> `update`
    (or `create` when there is none); gone -> `delete`, after all creates and updates;
  * `remote.CopyToRemote` of a directory archive ending in "/" -> copy its contents (scp) when new
    or changed; nothing on delete (the provider does not delete either).
  * unchanged resources are left alone.
`local.Command` (the SOPS files) is not applied here: the harness executes it for real while the
program runs (`run_program(local_dir=...)`, in a scratch stand-in for the repository) and hands
its real stdout to the resources that consume it, as the provider would; every program run
executes it again (the real engine would only on a changed input; `nxfarm.sops sync` answers
"unchanged" with the same ciphertext then). `remote.Command` stdout is kept in `outputs` but
feeds no other resource in this program.
Creates and updates run in dependency order (the dependencies each registration declared, as the
engine would use them), deletes in the reverse order, one at a time.
What it does not do: the engine's real diff (secret-aware, provider Check/Diff), replacement
semantics of `triggers` (this program uses none), parallelism, or the provider's own SSH/SFTP code.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from tests.components.pulumi_harness import ProgramRun, Registered, unwrap

from .testhosts import TestHost

REMOTE_TYPES = ("command:remote:Command", "command:remote:CopyToRemote")


class DeployDouble:
    def __init__(self, hosts: list[TestHost]) -> None:
        self.hosts = {host.ip: host for host in hosts}
        self.state: dict[str, tuple[str, dict[str, Any]]] = {}
        self.outputs: dict[str, str] = {}

    def up(self, run: ProgramRun) -> list[tuple[str, str]]:
        """Apply one program run; returns the (resource, action) pairs executed, in order."""
        remote = [r for r in run.resources if r.typ in REMOTE_TYPES]
        wanted = {r.name: (r.typ, unwrap(r.inputs)) for r in _dependency_order(remote)}
        actions = []
        for name, (typ, inputs) in wanted.items():
            if name not in self.state:
                actions.append((name, "create"))
                self._apply(typ, inputs, "create", name)
            elif self.state[name][1] != inputs:
                actions.append((name, "update"))
                self._apply(typ, inputs, "update" if inputs.get("update") else "create", name)
        for name in [n for n in reversed(self.state) if n not in wanted]:
            typ, inputs = self.state[name]
            if typ == "command:remote:Command" and inputs.get("delete"):
                actions.append((name, "delete"))
                self._apply(typ, inputs, "delete", name)
        self.state = wanted
        return actions

    def destroy(self) -> list[tuple[str, str]]:
        return self.up(ProgramRun([], {}, None))

    def _apply(self, typ: str, inputs: dict[str, Any], phase: str, name: str) -> None:
        host = self.hosts[inputs["connection"]["host"]]
        if typ == "command:remote:CopyToRemote":
            host.ssh(f"mkdir -p {shlex.quote(inputs['remotePath'])}")
            for item in sorted(Path(inputs["source"][1]).iterdir()):
                host.copy(item, inputs["remotePath"] + "/")
            return
        self.outputs[name] = host.ssh(inputs[phase], stdin=inputs.get("stdin") or "").stdout


def _dependency_order(resources: list[Registered]) -> list[Registered]:
    """Each resource after the ones it depends on; ties keep registration order."""
    by_name = {r.name: r for r in resources}
    done: dict[str, Registered] = {}

    def visit(resource: Registered, path: tuple[str, ...]) -> None:
        if resource.name in done:
            return
        if resource.name in path:
            raise ValueError(f"dependency cycle: {' -> '.join((*path, resource.name))}")
        for dep in sorted(resource.depends_on):
            if dep in by_name:
                visit(by_name[dep], (*path, resource.name))
        done[resource.name] = resource

    for resource in resources:
        visit(resource, ())
    return list(done.values())
