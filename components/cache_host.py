"""CacheHost: the Nx remote cache on one machine, deployed over SSH from shipped wheels."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pulumi
from pulumi_command import remote

from ._device import tag_device
from ._remote import host_command, preflight, ship_wheels
from ._wheels import wheels_digest
from .render.cache_host import (
    S3_CREDENTIALS_PATH,
    SERVICE_USER,
    TokenGrant,
    TOKENS_PATH,
    cache_unit,
    cache_url,
    install_script,
    remove_script,
    s3_credentials_install_command,
    tokens_file,
    tokens_install_command,
)
from .render.host import claim, if_owned
from .render.venv import ensure_system_user
from .settings import CacheHostSettings

REMOTE_WHEELS_DIR = "/opt/nx-farm/wheels/cache"
# Which stack name owns the cache host's install; the scheduler on it is owned by the same name.
OWNER_MARK = "cache-host.owner"


@dataclass(frozen=True, kw_only=True)
class CacheHostArgs:
    """+ settings: the `cacheHost` stack config
    + connection: SSH to the host, host key pinned
    + tokens: token name -> secret token (one per agent and orchestrator)
    + grants: token name -> its scope and namespaces (default: read-write, trusted)
    + wheels_dir: local directory with the server's wheel and its dependency wheels
    + cache_tag: the tailnet tag of the cache host's device
    + acl: the tailnet policy that defines the tags (tags are applied after it)
    + where: its place in the stack config (`nx-farm:cacheHost`), for error messages
    + s3_credentials: with S3 storage, the store's credentials file (secret; render.cache_host)
    """

    settings: CacheHostSettings
    connection: remote.ConnectionArgs
    tokens: dict[str, pulumi.Input[str]]
    wheels_dir: Path
    cache_tag: str
    acl: pulumi.Resource
    where: str = "nx-farm:cacheHost"
    grants: dict[str, TokenGrant] = field(default_factory=dict)
    s3_credentials: pulumi.Input[str] | None = None


class CacheHost(pulumi.ComponentResource):
    url: pulumi.Output[str]

    def __init__(self, name: str, args: CacheHostArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("nxfarm:index:CacheHost", name, None, opts)
        settings = args.settings
        digest = wheels_digest(args.wheels_dir, "nxfarm_cache_server")
        secret_output = pulumi.ResourceOptions(parent=self, additional_secret_outputs=["stdout", "stderr"])

        owned = lambda command: if_owned(OWNER_MARK, name, command)  # noqa: E731

        # Every step on the host waits until the operator may reach it (see NxAgent).
        self.reachable = tag_device(name, target=settings, where=args.where, tags=[args.cache_tag], acl=args.acl,
                                    parent=self)
        self.preflight = preflight(f"{name}-preflight", args.connection, settings, args.where,
                                   pulumi.ResourceOptions(parent=self, depends_on=self.reachable))
        after_preflight = pulumi.ResourceOptions(parent=self, depends_on=[self.preflight])
        self.wheels = ship_wheels(f"{name}-wheels", args.connection, settings, args.wheels_dir, REMOTE_WHEELS_DIR,
                                  after_preflight)

        token_text = pulumi.Output.all(**args.tokens).apply(lambda tokens: tokens_file(tokens, args.grants))
        install_tokens = f"{ensure_system_user(SERVICE_USER)} && {tokens_install_command()}"
        self.tokens_file = host_command(
            f"{name}-tokens", args.connection, run=install_tokens, delete=owned(f"rm -f {TOKENS_PATH}"),
            stdin=pulumi.Output.secret(token_text), logging=remote.Logging.STDERR,
            opts=pulumi.ResourceOptions.merge(secret_output, after_preflight),
        )

        before_service: list[pulumi.Resource] = [self.wheels, self.tokens_file]
        if settings.storage is not None:
            if args.s3_credentials is None:
                raise ValueError(f"{args.where}.storage: S3 storage needs s3_credentials")
            install_credentials = (f"{ensure_system_user(SERVICE_USER)} && "
                                   f"sh -c {shlex.quote(s3_credentials_install_command(settings))}")
            self.s3_credentials = host_command(
                f"{name}-s3-credentials", args.connection, run=install_credentials,
                delete=owned(f"rm -f {S3_CREDENTIALS_PATH} {S3_CREDENTIALS_PATH}.previous"), stdin=pulumi.Output.secret(args.s3_credentials),
                logging=remote.Logging.STDERR, opts=pulumi.ResourceOptions.merge(secret_output, after_preflight),
            )
            before_service.append(self.s3_credentials)

        # The digest and the unit travel in the command inputs, so a new wheel set or a changed
        # unit is an update (the script restarts only then); nothing here uses `triggers`.
        script = install_script(settings, REMOTE_WHEELS_DIR)
        install = f"NXFARM_WHEELS={digest} sh -c {shlex.quote(script)} && {claim(OWNER_MARK, name)}"
        self.service = host_command(
            f"{name}-service", args.connection, run=install,
            delete=owned(f"sh -c {shlex.quote(remove_script(settings, settings.purge_on_destroy))}"),
            stdin=cache_unit(settings), logging=remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=before_service),
        )

        self.url = pulumi.Output.from_input(cache_url(settings))
        self.register_outputs({"url": self.url})
