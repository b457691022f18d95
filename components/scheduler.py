"""FarmScheduler: `nxfarm scheduler run` on the cache host, bound to its tailnet address."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi_command import remote

from ._remote import host_command, ship_wheels
from ._wheels import wheels_digest
from .cache_host import OWNER_MARK
from .render.agent import HEALTH_TIMER, HEALTH_UNIT, health_service, health_timer
from .render.host import claim, if_owned
from .render.scheduler import INSTALL_ROOT, install_script, remove_script, scheduler_unit, tls_install_command
from .render.systemd import remove_unit, stop_for_good
from .settings import SshTarget

REMOTE_WHEELS_DIR = "/opt/nx-farm/wheels/agent"


@dataclass(frozen=True, kw_only=True)
class FarmSchedulerArgs:
    """+ connection: SSH to the cache host
    + bind: the address the scheduler and its dashboard listen on
    + port: the scheduler port (tailnet.schedulerPort)
    + tls_env: the scheduler's NXFARM_TLS_* lines (secret)
    + wheels_dir: the nxfarm runtime's wheel set (the agents' set)
    + cache_url: the cache server as this host reaches it, for the health monitor
    + target: the cache host's settings (address, host key, Python, CPU)
    + owner: the cache host's stack name, which owns the install (see CacheHost)
    + after: the cache host's preflight; nothing here runs before it
    """

    connection: remote.ConnectionArgs
    bind: str
    port: int
    tls_env: pulumi.Input[str]
    wheels_dir: Path
    cache_url: str
    target: SshTarget
    owner: str
    after: pulumi.Resource


class FarmScheduler(pulumi.ComponentResource):
    def __init__(self, name: str, args: FarmSchedulerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("nxfarm:index:FarmScheduler", name, None, opts)
        owned = lambda command: if_owned(OWNER_MARK, args.owner, command)  # noqa: E731
        after_preflight = pulumi.ResourceOptions(parent=self, depends_on=[args.after])
        self.wheels = ship_wheels(f"{name}-wheels", args.connection, args.target, args.wheels_dir, REMOTE_WHEELS_DIR,
                                  after_preflight)
        self.tls = host_command(
            f"{name}-tls", args.connection, run=tls_install_command(), delete=None,
            stdin=pulumi.Output.secret(args.tls_env), logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions.merge(after_preflight,
                                              pulumi.ResourceOptions(additional_secret_outputs=["stdout", "stderr"])),
        )
        run = (f"NXFARM_WHEELS={wheels_digest(args.wheels_dir, 'nxfarm')} "
               f"sh -c {shlex.quote(install_script(REMOTE_WHEELS_DIR))} && {claim(OWNER_MARK, args.owner)}")
        self.service = host_command(
            f"{name}-service", args.connection, run=run, delete=owned(f"sh -c {shlex.quote(remove_script())}"),
            stdin=scheduler_unit(args.bind, args.port), logging=remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.wheels, self.tls]),
        )
        # The health monitor heals the cache host's services too (cache server and scheduler).
        units = {HEALTH_UNIT: health_service(args.cache_url, INSTALL_ROOT), HEALTH_TIMER: health_timer()}
        self.health_units = [
            host_command(
                f"{name}-unit-{unit.replace('.', '-')}", args.connection,
                run=f"install -m 0644 /dev/stdin /etc/systemd/system/{unit} && systemctl daemon-reload",
                delete=owned(remove_unit(unit)),
                stdin=text, opts=after_preflight,
            )
            for unit, text in units.items()
        ]
        self.health = host_command(
            f"{name}-health", args.connection, run=f"systemctl enable --now {HEALTH_TIMER}",
            delete=owned(stop_for_good(HEALTH_TIMER, HEALTH_UNIT)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.service, *self.health_units]),
        )
        self.address = pulumi.Output.from_input(f"tls://{args.bind}:{args.port}")
        self.register_outputs({"address": self.address})
