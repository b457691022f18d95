"""The remote resources every host component declares the same way."""

from __future__ import annotations

import shlex
from pathlib import Path

import pulumi
from pulumi_command import remote

from .render.host import preflight_script
from .settings import SshTarget


def ship_wheels(name: str, connection: remote.ConnectionArgs, target: SshTarget, wheels_dir: Path, remote_dir: str,
                opts: pulumi.ResourceOptions) -> remote.CopyToRemote:
    """Copy a wheel set's contents (the trailing slash) to the host, which may have no internet.

    pulumi-command 1.2.1 copies again on an update only when the archive or `remotePath` changed
    (copyController.go), not when the connection did: a new address or a reinstalled host (new
    host key) would get no wheels. Those go in `triggers`, so they replace (copy anew); the copy
    has no delete, so the replacement removes nothing."""
    return remote.CopyToRemote(name, connection=connection, source=pulumi.FileArchive(str(wheels_dir) + "/"),
                               remote_path=remote_dir, triggers=[target.host, target.ssh_port, target.host_key],
                               opts=opts)


def host_command(name: str, connection: remote.ConnectionArgs, *, run: str, delete: str | None,
                 opts: pulumi.ResourceOptions, update: str | None = None, stdin: pulumi.Input[str] | None = None,
                 logging: remote.Logging | None = None) -> remote.Command:
    """An idempotent command: a changed input (command text or stdin) runs it again as an update,
    never a replacement (no `triggers`); file content travels on stdin, never in the command."""
    return remote.Command(name, connection=connection, create=run, update=update or run, delete=delete,
                          stdin=stdin, logging=logging, add_previous_output_in_env=False, opts=opts)


def preflight(name: str, connection: remote.ConnectionArgs, target: SshTarget, where: str,
              opts: pulumi.ResourceOptions) -> remote.Command:
    """Checks the host before anything is installed (and again when the connection changes)."""
    return host_command(name, connection, run=f"sh -c {shlex.quote(preflight_script(target, where))}", delete=None,
                        opts=opts)
