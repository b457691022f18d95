"""NxAgent: one build agent. Its encrypted env file, its units, its tailnet device settings."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi_command import remote

from ._device import tag_device
from ._remote import host_command, preflight, ship_wheels
from ._wheels import wheels_digest
from .render.agent import (
    AGENT_UNIT,
    INSTALL_ROOT,
    ENV_FILE,
    HEALTH_TIMER,
    HEALTH_UNIT,
    agent_unit,
    health_service,
    health_timer,
    install_script,
)
from .render.host import claim, if_owned
from .render.systemd import remove_unit, stop_for_good, update_unit_file
from .settings import AgentSettings


@dataclass(frozen=True, kw_only=True)
class NxAgentArgs:
    """+ settings: this agent's stack config
    + connection: SSH to the agent, host key pinned
    + env_ciphertext: the agent's SOPS-encrypted env file (from SopsRecipients)
    + deploy_user: the user the agent service runs as
    + agent_tag: the farm's agent tag, always applied to the device
    + acl: the tailnet policy that defines the tags (tags are applied after it)
    + wheels_dir: local directory with the nxfarm runtime's wheel set for this agent's Python and CPU
    + cache_url: the cache server the health monitor checks
    + where: this agent's place in the stack config (`nx-farm:agents[2]`), for error messages
    """

    settings: AgentSettings
    connection: remote.ConnectionArgs
    env_ciphertext: pulumi.Input[str]
    deploy_user: str
    agent_tag: str
    acl: pulumi.Resource
    wheels_dir: Path
    cache_url: str
    where: str


OWNER_MARK = "agent.owner"
REMOTE_WHEELS_DIR = "/opt/nx-farm/wheels/agent"


def _install_file(path: str, mode: str, then: str) -> str:
    return f"install -D -m {mode} /dev/stdin {path} && {then}"


class NxAgent(pulumi.ComponentResource):
    def __init__(self, name: str, args: NxAgentArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("nxfarm:index:NxAgent", name, None, opts)
        agent = args.settings
        owned = lambda command: if_owned(OWNER_MARK, name, command)  # noqa: E731

        # Operators reach a farm host only once it carries its tag (the policy grants SSH to tags),
        # so every step on the host waits for the device's tags, or for the policy when the host
        # sits behind a subnet router.
        tags = sorted({args.agent_tag, *agent.tags})
        reachable = tag_device(name, target=agent, where=args.where, tags=tags, acl=args.acl, parent=self)
        # Named by the agent's name, not its index: removing another agent must not change this step.
        self.preflight = preflight(f"{name}-preflight", args.connection, agent, f"nx-farm:agents (name: {name})",
                                   pulumi.ResourceOptions(parent=self, depends_on=reachable))
        after_preflight = pulumi.ResourceOptions(parent=self, depends_on=[self.preflight])

        self.wheels = ship_wheels(f"{name}-wheels", args.connection, agent, args.wheels_dir, REMOTE_WHEELS_DIR,
                                  after_preflight)
        # The wheel-set digest is in the command, so new runtime code is an update (and a restart).
        runtime = (f"NXFARM_WHEELS={wheels_digest(args.wheels_dir, 'nxfarm')} "
                   f"sh -c {shlex.quote(install_script(agent, args.deploy_user, REMOTE_WHEELS_DIR))} && "
                   f"{claim(OWNER_MARK, name)}")
        self.runtime = host_command(
            f"{name}-runtime", args.connection, run=runtime,
            delete=owned(f"rm -rf {INSTALL_ROOT} {REMOTE_WHEELS_DIR} /etc/nx-farm/{OWNER_MARK}"),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.wheels]),
        )

        # Ciphertext only: the service decrypts it into its environment at start. Its group is the
        # service user's, which the runtime step creates.
        install_env = _install_file(ENV_FILE, "0640", f"chgrp {shlex.quote(args.deploy_user)} {ENV_FILE} && "
                                    f"(systemctl try-restart {AGENT_UNIT} || true)")
        self.env_file = host_command(
            f"{name}-env", args.connection, run=install_env, delete=owned(f"rm -f {ENV_FILE}"),
            stdin=args.env_ciphertext, logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.runtime]),
        )

        units = {AGENT_UNIT: agent_unit(agent, args.deploy_user), HEALTH_UNIT: health_service(args.cache_url),
                 HEALTH_TIMER: health_timer()}
        self.units = [
            host_command(
                f"{name}-unit-{unit.replace('.', '-')}",
                args.connection,
                run=_install_file(f"/etc/systemd/system/{unit}", "0644", "systemctl daemon-reload"),
                update=update_unit_file(unit, restart=unit == AGENT_UNIT),
                delete=owned(remove_unit(unit)),
                stdin=text,
                opts=after_preflight,
            )
            for unit, text in units.items()
        ]
        self.enabled = host_command(
            f"{name}-enable", args.connection, run=f"systemctl enable --now {AGENT_UNIT} {HEALTH_TIMER}",
            # The health check goes first: a run already under way would restart the stopped agent.
            delete=owned(stop_for_good(HEALTH_TIMER, HEALTH_UNIT, AGENT_UNIT)),
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.runtime, self.env_file, *self.units]),
        )
        self.register_outputs({"tags": tags})
