"""Stack config: one pydantic model per shape, validated before any resource exists.

Keys are camelCase in `Pulumi.<stack>.yaml` (`nx-farm:cacheHost`, `nx-farm:agents`, ...). A bad
config stops the program with one line per problem, naming the key path
(`nx-farm:agents[1].host: field required`). Secrets never live here: they come from Pulumi
secret config or generated secret resources.
"""

from __future__ import annotations

import base64
import ipaddress
import re
import urllib.parse
from collections.abc import Iterable
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.alias_generators import to_camel

from cache_server.config import MAX_WORKERS

PROJECT = "nx-farm"

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
_TAG = re.compile(r"tag:[a-z0-9][a-z0-9-]{0,62}")
_AGE_RECIPIENT = re.compile(r"age1[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{58}")
_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)*")
_HOST_KEY_TYPES = ("ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")
# Tailscale gives every device an address in these ranges (CGNAT and its ULA prefix).
TAILNET_NETWORKS = (ipaddress.ip_network("100.64.0.0/10"), ipaddress.ip_network("fd7a:115c:a1e0::/48"))
PythonVersion = Literal["3.11", "3.12", "3.13"]
Arch = Literal["x86_64", "aarch64"]
PYTHONS: tuple[str, ...] = get_args(PythonVersion)
ARCHES: tuple[str, ...] = get_args(Arch)
_SIZE = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B?)?", re.IGNORECASE)
_ABS_PATH = re.compile(r"/[A-Za-z0-9._/-]*")

Name = Annotated[str, Field(pattern=NAME_PATTERN)]
Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigInvalid(Exception):
    """Raised with one line per problem; `__main__` turns it into a `pulumi.RunError`."""


def check_tag(value: str) -> str:
    if not _TAG.fullmatch(value):
        raise ValueError(f"tags must look like 'tag:name' (lowercase letters, digits, -), got {value!r}")
    return value


def check_host(value: str) -> str:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.fullmatch(value):
            raise ValueError(f"not an IP address or DNS name: {value!r}") from None
    return value


def check_host_key(value: str) -> str:
    """An OpenSSH public host key line (`<type> <base64> [comment]`) whose blob names the same type."""
    parts = value.split()
    if parts[:1] == ["ssh-rsa"]:
        # pulumi-command 1.2.1 then offers only SHA-1 `ssh-rsa` signatures, which OpenSSH 8.8+ refuses.
        raise ValueError("ssh-rsa host keys cannot be pinned (the deploy's SSH client would offer only SHA-1 "
                         "signatures, which OpenSSH 8.8+ refuses): pin the host's ed25519 key, from "
                         "`ssh-keyscan -t ed25519 HOST`")
    if len(parts) < 2 or parts[0] not in _HOST_KEY_TYPES:
        raise ValueError(f"host key must be '<type> <base64>' with type one of {', '.join(_HOST_KEY_TYPES)} "
                         "(as printed by ssh-keyscan)")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except ValueError:
        raise ValueError("host key is not valid base64") from None
    length = int.from_bytes(blob[:4], "big") if len(blob) >= 4 else -1
    if blob[4 : 4 + length].decode("ascii", "replace") != parts[0]:
        raise ValueError(f"host key blob does not encode a {parts[0]} key")
    return f"{parts[0]} {parts[1]}"


def check_age_recipient(value: str) -> str:
    if not _AGE_RECIPIENT.fullmatch(value):
        raise ValueError(f"not an age recipient (age1 followed by 58 bech32 characters): {value[:20]!r}...")
    return value


def check_size(value: str) -> str:
    if not _SIZE.fullmatch(value.strip()):
        raise ValueError(f"not a size (examples: 50GiB, 512MiB): {value!r}")
    return value.strip()


def check_abs_path(value: str) -> str:
    if not _ABS_PATH.fullmatch(value) or "/../" in value + "/" or "//" in value:
        raise ValueError(f"must be an absolute path of letters, digits, . _ - /: {value!r}")
    return value.rstrip("/") or "/"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


def is_tailnet_address(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(address in network for network in TAILNET_NETWORKS if network.version == address.version)


class SshTarget(_Model):
    """How the deploy reaches a host (address, user, pinned host key), whether it is a tailnet
    device the farm tags, and the Python and CPU its wheels must fit."""

    host: str
    ssh_port: Port = 22
    ssh_user: str = "root"
    host_key: str
    # Tagged and kept from key expiry by the farm; looked up by its address `host`. Default: true
    # exactly when `host` is a tailnet address (100.64.0.0/10, fd7a:115c:a1e0::/48); a host
    # reached through a subnet router is not a device.
    tailnet_device: bool | None = None
    python: PythonVersion = "3.11"  # the host's python3 (checked before anything is installed)
    arch: Arch = "x86_64"

    _host = field_validator("host")(lambda cls, v: check_host(v))
    _key = field_validator("host_key")(lambda cls, v: check_host_key(v))

    @model_validator(mode="after")
    def _device_address(self) -> "SshTarget":
        if self.tailnet_device and not is_ip(self.host):
            raise ValueError(f"tailnetDevice: true needs host to be the device's tailnet IP address (the farm "
                             f"finds the device by it), not {self.host!r}")
        return self

    @property
    def is_tailnet_device(self) -> bool:
        return self.tailnet_device if self.tailnet_device is not None else is_tailnet_address(self.host)


def is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
        return True
    except ValueError:
        return False


class S3StorageSettings(_Model):
    """`cacheHost.storage`: the entries in a bucket of an S3-compatible store (Ceph RGW, MinIO,
    Garage, a NAS), shared by every cache host. Credentials are the secret config keys
    `s3AccessKeyId` and `s3SecretAccessKey`, never here."""

    endpoint: str  # http(s)://host[:port], as the cache hosts reach the store
    bucket: str
    prefix: str = "nx-cache"
    region: str = "us-east-1"
    # What each cache host keeps on its own disk (under storagePath) and serves with sendfile.
    local_tier_size: str = "10GiB"

    _size = field_validator("local_tier_size")(lambda cls, v: check_size(v))

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        match = re.fullmatch(r"https?://(\[[0-9a-fA-F:.]+\]|[^\s/:\[\]]+)(:\d{1,5})?/?", value)
        if not match:
            raise ValueError(f"must be http(s)://host[:port] with no path, got {value!r}")
        return value.rstrip("/")

    @field_validator("bucket", "prefix")
    @classmethod
    def _location(cls, value: str, info: ValidationInfo) -> str:
        from cache_server.storage.objectstore import S3Location

        bucket = info.field_name == "bucket"
        try:
            S3Location.parse(f"s3://{value}" if bucket else f"s3://nx-farm/{value}")
        except ValueError:
            rule = ("is not a bucket name: 3-63 lowercase letters, digits, '.' and '-'" if bucket else
                    "is not a key prefix: letters, digits, '.', '_', '-' and '/'")
            raise ValueError(f"{value!r} {rule}") from None
        return value if bucket else value.strip("/")

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def host_and_port(self) -> tuple[str, int]:
        parts = urllib.parse.urlsplit(self.endpoint)
        return (parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80))


class CacheServerHost(SshTarget):
    """One machine that runs the cache server: what is its own (address, port, local disk)."""

    name: Name
    bind_address: str | None = None  # where the server listens besides 127.0.0.1; default: `host` if it is an IP
    port: Port = 3333
    # The cache directory; with S3 storage, the local tier's.
    storage_path: str = "/var/lib/nx-farm/cache"
    # Server processes (cache_server --workers): "auto" = one per core of the host, at most 8.
    workers: int | Literal["auto"] = "auto"
    purge_on_destroy: bool = False  # also delete the cached data when the cache host is destroyed

    _path = field_validator("storage_path")(lambda cls, v: check_abs_path(v))

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if value == "auto" or (type(value) is int and 1 <= value <= MAX_WORKERS):
            return value
        raise ValueError(f"must be a number from 1 to {MAX_WORKERS} or 'auto', not {value!r}")

    @field_validator("bind_address")
    @classmethod
    def _bind(cls, value: str | None) -> str | None:
        if value is not None:
            ipaddress.ip_address(value)  # ValueError names the value
        return value

    def listen_address_or_problem(self, where: str) -> tuple[str, str]:
        """(the address the server binds, "") or ("", the problem naming `where`)."""
        if self.bind_address:
            return self.bind_address, ""
        try:
            return str(ipaddress.ip_address(self.host)), ""
        except ValueError:
            return "", (f"{PROJECT}:{where}.bindAddress: required when {where}.host is a DNS name ({self.host!r}): "
                        "the server binds to an address, never to all interfaces")

    @property
    def listen_address(self) -> str:
        address, problem = self.listen_address_or_problem("cacheHost")
        if problem:
            raise ConfigInvalid(problem)
        return address


class CacheHostSettings(CacheServerHost):
    """The first cache host: it also runs the scheduler, and says how the cache stores."""

    max_size: str = "50GiB"  # the cache's cap: the directory's, or with S3 storage the bucket's
    max_artifact_size: str = "2GiB"
    max_entries: Annotated[int, Field(ge=0)] = 0  # 0: no cap but the filesystem's inodes
    storage: S3StorageSettings | None = None  # default: the disk under storagePath

    _sizes = field_validator("max_size", "max_artifact_size")(lambda cls, v: check_size(v))


class CacheFrontendSettings(CacheServerHost):
    """Another cache host on the same bucket (`cacheFrontends`): its own address, port and local
    tier; the storage and the size caps are the first cache host's."""

    def as_cache_host(self, first: CacheHostSettings) -> CacheHostSettings:
        return first.model_copy(update={name: getattr(self, name) for name in CacheFrontendSettings.model_fields})


class AgentSettings(SshTarget):
    name: Name
    cache_host: str | None = None  # the cache host it uses, by name (default: cacheHost)
    task_slots: Annotated[int, Field(ge=1, le=256)] = 2
    labels: list[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$")]] = []
    tags: list[str] = []
    workspace_path: str = "/var/lib/nx-farm/workspace"
    age_recipient: str
    sops_path: str = "/usr/local/bin/sops"  # sops on the agent; its service decrypts its env file with it

    _tags = field_validator("tags")(lambda cls, v: [check_tag(t) for t in v])
    _path = field_validator("workspace_path", "sops_path")(lambda cls, v: check_abs_path(v))
    _age = field_validator("age_recipient")(lambda cls, v: check_age_recipient(v))


class SubnetRouter(_Model):
    """A tailnet device that routes to agents off the tailnet. With `tag` (the router's own
    device tag), the farm lets that tag's devices have these routes approved automatically;
    without it, approve them in the admin console."""

    name: Name
    routes: list[str] = Field(min_length=1)
    tag: str | None = None

    _tag = field_validator("tag")(lambda cls, v: v if v is None else check_tag(v))

    @field_validator("routes")
    @classmethod
    def _routes(cls, value: list[str]) -> list[str]:
        out = []
        for route in value:
            try:
                out.append(str(ipaddress.ip_network(route, strict=True)))
            except ValueError as exc:
                raise ValueError(f"route {route!r}: {exc}") from None
        return out


class TailnetSettings(_Model):
    agent_tag: str = "tag:nx-agent"
    cache_tag: str = "tag:nx-cache"
    orchestrator_tag: str = "tag:nx-orchestrator"
    operators: list[str] = Field(default_factory=lambda: ["autogroup:admin"])
    base_policy_file: str = "infra/tailnet-policy.hujson"
    scheduler_port: Port = 8786
    subnet_routers: list[SubnetRouter] = []
    # The first `pulumi up` may replace a tailnet policy that is not Tailscale's default only when
    # this is true (or the policy was imported): basePolicyFile must then hold the live policy.
    overwrite_existing_policy: bool = False

    _tags = field_validator("agent_tag", "cache_tag", "orchestrator_tag")(lambda cls, v: check_tag(v))

    @field_validator("operators")
    @classmethod
    def _operators(cls, value: list[str]) -> list[str]:
        for who in value:
            if not (who.startswith(("group:", "autogroup:", "tag:")) or re.fullmatch(r"[^@\s]+@[^@\s]+", who)):
                raise ValueError(f"operator {who!r} must be a login email, group:, autogroup: or tag:")
        return value


class SopsSettings(_Model):
    operator_recipients: list[str] = Field(min_length=1)
    config_file: str = ".sops.yaml"
    shared_file: str = "infra/nx-farm.sops.env"
    agents_dir: str = "infra/agents"

    _age = field_validator("operator_recipients")(lambda cls, v: [check_age_recipient(r) for r in v])


Tier = Literal["read", "branch", "trusted"]


class OrchestratorSettings(_Model):
    """A developer box or CI job that runs `nxfarm build`. Its tier decides its cache token:
    `read` restores only; `branch` writes its own namespace (`/ns/<name>`) and reads trusted
    entries through it; `trusted` writes the trusted namespace (a CI job on protected branches)."""

    name: Name
    tier: Tier = "branch"
    cache_host: str | None = None  # the cache host it uses, by name (default: cacheHost)


class TrustSettings(_Model):
    """Which repositories agents fetch from (fnmatch patterns of URLs, as orchestrators' remotes
    name them), and which branches hold trusted commits (patterns; default: each repository's
    default branch)."""

    repositories: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    protected_branches: list[Annotated[str, Field(pattern=r"^[^\s]+$")]] = []

    @field_validator("repositories")
    @classmethod
    def _no_spaces(cls, value: list[str]) -> list[str]:
        for url in value:
            if any(ch.isspace() for ch in url) or url.startswith("-"):
                raise ValueError(f"a repository URL has no spaces and does not start with '-': {url!r}")
        return value


class FarmSettings(_Model):
    deploy_user: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "nxfarm"
    secrets_generation: Annotated[int, Field(ge=1)] = 1
    # A bare name is an orchestrator of the `branch` tier.
    orchestrators: list[OrchestratorSettings] = Field(default_factory=lambda: [OrchestratorSettings(name="operator")])
    trust: TrustSettings
    cache_host: CacheHostSettings
    # More cache hosts serving the same S3 bucket (one per site or rack): needs cacheHost.storage.
    cache_frontends: list[CacheFrontendSettings] = []
    agents: list[AgentSettings] = []
    tailnet: TailnetSettings = TailnetSettings()
    sops: SopsSettings

    @property
    def cache_hosts(self) -> list[CacheHostSettings]:
        """Every cache host, the first one first; each with the shared storage and caps."""
        return [self.cache_host, *(frontend.as_cache_host(self.cache_host) for frontend in self.cache_frontends)]

    def cache_host_named(self, name: str | None) -> CacheHostSettings:
        return next((host for host in self.cache_hosts if host.name == name), self.cache_host)

    @field_validator("orchestrators", mode="before")
    @classmethod
    def _bare_names(cls, value: Any) -> Any:
        return [{"name": item} if isinstance(item, str) else item for item in value] if isinstance(value, list) else value


def _cross_checks(settings: FarmSettings) -> list[str]:
    """Rules across entries, each reported at the later of the clashing entries."""
    problems = _cache_host_checks(settings)
    seen_names: dict[str, str] = {}
    cache_names = [host.name for host in settings.cache_hosts]
    users: list[tuple[str, AgentSettings | OrchestratorSettings]] = [
        *((f"agents[{i}]", a) for i, a in enumerate(settings.agents)),
        *((f"orchestrators[{i}]", o) for i, o in enumerate(settings.orchestrators))]
    for where, who in users:
        if who.cache_host is not None and who.cache_host not in cache_names:
            problems.append(f"{PROJECT}:{where}.cacheHost: {who.cache_host!r} is not a cache host "
                            f"(one of {', '.join(cache_names)})")
    problems += _one_each(((agent, f"agents[{i}]") for i, agent in enumerate(settings.agents)), "agent", seen_names)
    branch_tokens = {f"{agent.name}-branch": agent.name for agent in settings.agents}
    for i, orchestrator in enumerate(settings.orchestrators):
        name = orchestrator.name
        if name in branch_tokens:
            problems.append(f"{PROJECT}:orchestrators[{i}]: {name!r} is the name of agent {branch_tokens[name]!r}'s "
                            "branch-tier cache token; pick another name")
        if name in seen_names:
            problems.append(f"{PROJECT}:orchestrators[{i}]: {name!r} is also {seen_names[name]}'s name; each gets its own token")
        seen_names.setdefault(name, f"orchestrators[{i}]")
    return problems


def cache_places(settings: FarmSettings) -> list[tuple[CacheServerHost, str]]:
    """Each cache host as declared, with its place in the stack config (`cacheFrontends[0]`)."""
    return [(settings.cache_host, "cacheHost"), *((f, f"cacheFrontends[{i}]") for i, f in enumerate(settings.cache_frontends))]


def _cache_host_checks(settings: FarmSettings) -> list[str]:
    """Several cache hosts only on shared storage, each with its own name, address and bind address."""
    problems = []
    if settings.cache_frontends and settings.cache_host.storage is None:
        problems.append(f"{PROJECT}:cacheFrontends: more than one cache host needs cacheHost.storage (an S3 bucket "
                        "they share); on disk each would keep a cache of its own")
    problems += _one_each(cache_places(settings), "cache host", {})
    for host, where in cache_places(settings):
        problems.extend(p for p in [host.listen_address_or_problem(where)[1]] if p)
    return problems


def _one_each(places: Iterable[tuple[Any, str]], what: str, names: dict[str, str]) -> list[str]:
    """Each entry its own name and address; `names` (name -> place) is filled in for later checks."""
    problems, hosts = [], {}
    for entry, where in places:
        if entry.name in names:
            problems.append(f"{PROJECT}:{where}.name: duplicate {what} name {entry.name!r} (also {names[entry.name]})")
        names.setdefault(entry.name, where)
        if entry.host in hosts:
            problems.append(f"{PROJECT}:{where}.host: two {what}s on one address {entry.host!r} (also {hosts[entry.host]})")
        hosts.setdefault(entry.host, where)
    return problems


def secrets_required(settings: FarmSettings) -> list[str]:
    """The secret config keys this stack needs besides sshPrivateKey."""
    return ["s3AccessKeyId", "s3SecretAccessKey"] if settings.cache_host.storage is not None else []


TOP_LEVEL_KEYS = ("deployUser", "secretsGeneration", "orchestrators", "trust", "cacheHost", "cacheFrontends", "agents",
                  "tailnet", "sops")


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validate(raw: dict[str, Any]) -> FarmSettings:
    """Validate the stack config (camelCase keys, as in the stack file); ConfigInvalid lists every problem."""
    try:
        settings = FarmSettings.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            message = err["msg"].removeprefix("Value error, ")
            message = message[:1].lower() + message[1:]
            where = _path(err["loc"])
            lines.append(f"{PROJECT}:{where}: {message}" if where else f"{PROJECT}: {message}")
        raise ConfigInvalid("\n".join(lines)) from None
    problems = _cross_checks(settings)
    if problems:
        raise ConfigInvalid("\n".join(problems))
    return settings


def load(config: Any) -> FarmSettings:
    """Read the structured keys from a `pulumi.Config(PROJECT)` and validate them."""
    raw: dict[str, Any] = {}
    for key in TOP_LEVEL_KEYS:
        value = config.get_object(key) if key not in ("deployUser",) else config.get(key)
        if value is not None:
            raw[key] = value
    return validate(raw)
