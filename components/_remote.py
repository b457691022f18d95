"""The two remote resources every host component declares the same way."""

from __future__ import annotations

from pathlib import Path

import pulumi
from pulumi_command import remote


def ship_wheels(name: str, connection: remote.ConnectionArgs, wheels_dir: Path, remote_dir: str,
                parent: pulumi.Resource) -> remote.CopyToRemote:
    """Copy a wheel set's contents (the trailing slash) to the host, which may have no internet."""
    return remote.CopyToRemote(name, connection=connection, source=pulumi.FileArchive(str(wheels_dir) + "/"),
                               remote_path=remote_dir, opts=pulumi.ResourceOptions(parent=parent))


def host_command(name: str, connection: remote.ConnectionArgs, *, run: str, delete: str,
                 opts: pulumi.ResourceOptions, update: str | None = None, stdin: pulumi.Input[str] | None = None,
                 logging: remote.Logging | None = None) -> remote.Command:
    """An idempotent command: a changed input (command text or stdin) runs it again as an update,
    never a replacement (no `triggers`); file content travels on stdin, never in the command."""
    return remote.Command(name, connection=connection, create=run, update=update or run, delete=delete,
                          stdin=stdin, logging=logging, add_previous_output_in_env=False, opts=opts)
