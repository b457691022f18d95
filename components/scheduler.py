"""FarmScheduler: `nxfarm scheduler run` on the cache host, bound to its tailnet address."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi_command import remote

from ._remote import host_command, ship_wheels
from ._wheels import wheels_digest
from .render.scheduler import install_script, remove_script, scheduler_unit, tls_install_command

REMOTE_WHEELS_DIR = "/opt/nx-farm/wheels/agent"


@dataclass(frozen=True, kw_only=True)
class FarmSchedulerArgs:
    """+ connection: SSH to the cache host
    + bind: the address the scheduler and its dashboard listen on
    + port: the scheduler port (tailnet.schedulerPort)
    + tls_env: the scheduler's NXFARM_TLS_* lines (secret)
    + wheels_dir: the nxfarm runtime's wheel set (the agents' set)
    """

    connection: remote.ConnectionArgs
    bind: str
    port: int
    tls_env: pulumi.Input[str]
    wheels_dir: Path


class FarmScheduler(pulumi.ComponentResource):
    def __init__(self, name: str, args: FarmSchedulerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("nxfarm:index:FarmScheduler", name, None, opts)
        self.wheels = ship_wheels(f"{name}-wheels", args.connection, args.wheels_dir, REMOTE_WHEELS_DIR, self)
        self.tls = host_command(
            f"{name}-tls", args.connection, run=tls_install_command(), delete="true",
            stdin=pulumi.Output.secret(args.tls_env), logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["stdout", "stderr"]),
        )
        run = (f"NXFARM_WHEELS={wheels_digest(args.wheels_dir, 'nxfarm')} "
               f"sh -c {shlex.quote(install_script(REMOTE_WHEELS_DIR))}")
        self.service = host_command(
            f"{name}-service", args.connection, run=run, delete=f"sh -c {shlex.quote(remove_script())}",
            stdin=scheduler_unit(args.bind, args.port), logging=remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.wheels, self.tls]),
        )
        self.address = pulumi.Output.from_input(f"tls://{args.bind}:{args.port}")
        self.register_outputs({"address": self.address})
