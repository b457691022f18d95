"""What the cache host gets: its systemd unit, its tokens file and its install/remove scripts."""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from cache_server.auth import Scope, token_line

from ..settings import CacheHostSettings, OrchestratorSettings
from .systemd import remove_unit
from .venv import ensure_system_user, unit_from_stdin, venv_from_wheels

UNIT_NAME = "nx-farm-cache.service"
INSTALL_ROOT = "/opt/nx-farm/cache"
TOKENS_PATH = "/etc/nx-farm/cache-tokens"
S3_CREDENTIALS_PATH = "/etc/nx-farm/cache-s3-credentials"  # botocore's shared credentials file format
SERVICE_USER = "nxfarm-cache"


def cache_url(cache: CacheHostSettings) -> str:
    host = cache.listen_address
    return f"http://[{host}]:{cache.port}" if ":" in host else f"http://{host}:{cache.port}"


def cache_unit(cache: CacheHostSettings, install_root: str = INSTALL_ROOT) -> str:
    listen = cache.listen_address
    shown = f"[{listen}]" if ":" in listen else listen
    s3 = cache.storage
    storage = (["--storage", cache.storage_path] if s3 is None else
               ["--storage", s3.url, "--s3-endpoint", s3.endpoint, "--s3-region", s3.region,
                "--local-tier", cache.storage_path, "--local-tier-size", s3.local_tier_size])
    args = [
        f"{install_root}/venv/bin/python", "-m", "cache_server",
        "--bind", f"{shown}:{cache.port}", "--bind", f"127.0.0.1:{cache.port}",
        *storage, "--tokens", TOKENS_PATH,
        "--max-size", cache.max_size, "--max-artifact-size", cache.max_artifact_size,
        "--workers", str(cache.workers),
        *(["--max-entries", str(cache.max_entries)] if cache.max_entries else []),
    ]
    # The credentials stay in a file only root and the service can read (never in the unit, the
    # command line or the environment); no metadata-service probes on a homelab.
    s3_env = ("" if s3 is None else
              f"Environment=AWS_SHARED_CREDENTIALS_FILE={S3_CREDENTIALS_PATH}\nEnvironment=AWS_EC2_METADATA_DISABLED=true\n")
    return f"""[Unit]
Description=nx-farm cache server (Nx self-hosted remote cache)
Documentation=https://nx.dev/docs/kb/self-hosted-caching
Wants=network-online.target
After=network-online.target tailscaled.service
# The tailnet address may appear after boot: keep retrying the bind, never give up
StartLimitIntervalSec=0

[Service]
Type=exec
User={SERVICE_USER}
Group={SERVICE_USER}
ExecStart={shlex.join(args)}
ExecReload=/bin/kill -HUP $MAINPID
# SIGTERM lets uploads in flight finish (the server's --drain-timeout is 30 s)
TimeoutStopSec=45
Restart=on-failure
RestartSec=2
# One descriptor per connection and per upload or download in flight: the default 1024 would let
# about a thousand idle sockets stop the server (it also caps connections, --max-connections auto)
LimitNOFILE=65536
Environment=PYTHONUNBUFFERED=1
{s3_env}NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
ReadWritePaths={cache.storage_path}

[Install]
WantedBy=multi-user.target
"""


@dataclass(frozen=True)
class TokenGrant:
    """What one cache token may do: its scope and the namespaces it writes (cache_server/auth.py)."""

    scope: Scope = Scope.READWRITE
    namespaces: tuple[str, ...] = ("trusted",)


def orchestrator_grant(name: str, tier: str) -> TokenGrant:
    """`read` restores only; `branch` writes `/ns/<name>`; `trusted` writes the trusted namespace."""
    if tier == "read":
        return TokenGrant(Scope.READ, ())
    return TokenGrant(Scope.READWRITE, ("trusted",) if tier == "trusted" else (name,))


def orchestrator_cache_url(base: str, orchestrator: OrchestratorSettings) -> str:
    """NX_SELF_HOSTED_REMOTE_CACHE_SERVER for one orchestrator: its namespace when it is of the
    branch tier (Nx keeps the path: research/nx-cache.md)."""
    return f"{base.rstrip('/')}/ns/{orchestrator.name}" if orchestrator.tier == "branch" else base


AGENT_BRANCH_GRANT = TokenGrant(Scope.READWRITE, ("*",))  # an agent's untrusted builds: any namespace but trusted


def tokens_file(tokens: dict[str, str], grants: dict[str, TokenGrant] | None = None) -> str:
    """One `<name> <scope> sha256:<hex> ns=...` line per token, sorted by name; only hashes leave
    this function. A token without a grant writes the trusted namespace."""
    header = "# nx-farm cache tokens, written by Pulumi (components/cache_host.py). Hashes only.\n"
    grants = grants or {}
    return header + "".join(
        token_line(name, grant.scope, token, grant.namespaces)
        for name, token in sorted(tokens.items())
        for grant in [grants.get(name, TokenGrant())]
    )


def s3_credentials_file(access_key_id: str, secret_access_key: str) -> str:
    """botocore's shared credentials file (its default profile). ValueError for a value that would
    break the file's lines; the message never holds the value."""
    for name, value in (("s3AccessKeyId", access_key_id), ("s3SecretAccessKey", secret_access_key)):
        if not value.strip() or any(ch in value for ch in "\r\n"):
            raise ValueError(f"nx-farm:{name}: must be one non-empty line")
    return f"[default]\naws_access_key_id = {access_key_id.strip()}\naws_secret_access_key = {secret_access_key.strip()}\n"


def s3_credentials_install_command(cache: CacheHostSettings) -> str:
    """Reads the credentials file on stdin. When it changed and the server runs, the server restarts
    to use it (it reads credentials as it starts) and must then reach the store; if it cannot (a
    wrong key, a key not yet allowed on the bucket), the previous file comes back, the server with
    it, and the step fails with the store's answer: a bad rotation never takes the cache down."""
    path, new, previous = S3_CREDENTIALS_PATH, f"{S3_CREDENTIALS_PATH}.new", f"{S3_CREDENTIALS_PATH}.previous"
    return f"""set -eu
install -d -m 0755 {path.rsplit('/', 1)[0]}
install -m 0640 -o root -g {SERVICE_USER} /dev/stdin {new}
if cmp -s {new} {path}; then rm -f {new}; exit 0; fi
rm -f {previous}; if [ -e {path} ]; then cp -p {path} {previous}; fi
mv -f {new} {path}
if systemctl is-active --quiet {UNIT_NAME}; then
  systemctl restart {UNIT_NAME}
  if ! ({wait_for_health(cache, seconds=15)}); then
    if [ -e {previous} ]; then
      mv -f {previous} {path}; systemctl restart {UNIT_NAME}
      echo 'the new S3 credentials do not work: the previous ones are back in use' >&2
    fi
    exit 1
  fi
fi
rm -f {previous}
"""


def install_script(cache: CacheHostSettings, wheels_dir: str) -> str:
    """Idempotent install from the shipped wheels (no package index needed on the host).

    The service restarts only when the wheels or the unit changed. Reads the unit on stdin.
    Prints `changed` or `unchanged` as its last line.
    """
    package = "nxfarm-cache-server" if cache.storage is None else "nxfarm-cache-server[s3]"
    return f"""set -eu
changed=0
{ensure_system_user(SERVICE_USER)}
install -d -m 0750 -o {SERVICE_USER} -g {SERVICE_USER} {shlex.quote(cache.storage_path)}
{venv_from_wheels(INSTALL_ROOT, wheels_dir, shlex.quote(package))}
{unit_from_stdin(UNIT_NAME)}
{wait_for_health(cache)}
if [ "$changed" = 1 ]; then echo changed; else echo unchanged; fi
"""


def wait_for_health(cache: CacheHostSettings, seconds: int = 30) -> str:
    """Until /health answers; with S3 storage, until it also says the store works (the bucket
    exists, the credentials may use it), else the deploy fails with the store's answer."""
    probe = ("import json, sys, urllib.request\n"
             f"health = json.load(urllib.request.urlopen('http://127.0.0.1:{cache.port}/health', timeout=2))\n"
             "store = [p for p in health['problems'] if p.startswith('object store')]\n"
             "if store and '--report' in sys.argv:\n"
             "    print(store[0], file=sys.stderr)\n"
             "sys.exit(3 if store else 0)\n")
    # The store's answer last, where the eye lands after the journal's lines.
    report = "" if cache.storage is None else f"python3 -c {shlex.quote(probe)} --report || true; "
    return (f"i=0; until python3 -c {shlex.quote(probe)} 2>/dev/null; do i=$((i+1)); "
            f"if [ $i -ge {seconds} ]; then echo 'cache server not healthy after {seconds}s' >&2; "
            f"journalctl -u {UNIT_NAME} -n 20 --no-pager >&2 || true; {report}exit 1; fi; sleep 1; done")


def tokens_install_command() -> str:
    """Reads the tokens file on stdin; atomic replace, then SIGHUP (the server also notices the new file)."""
    return (f"install -d -m 0755 {TOKENS_PATH.rsplit('/', 1)[0]} && "
            f"install -m 0640 -o root -g {SERVICE_USER} /dev/stdin {TOKENS_PATH}.new && "
            f"mv -f {TOKENS_PATH}.new {TOKENS_PATH} && "
            f"(systemctl reload {UNIT_NAME} 2>/dev/null || true)")


def remove_script(cache: CacheHostSettings, purge: bool) -> str:
    """Stop and disable the service; the cached data stays unless `purge`."""
    q = shlex.quote
    purge_line = f"rm -rf {q(cache.storage_path)}\n" if purge else ""
    return (f"set -eu\n{remove_unit(UNIT_NAME)}\nrm -rf {INSTALL_ROOT} {TOKENS_PATH} {S3_CREDENTIALS_PATH} "
            f"{S3_CREDENTIALS_PATH}.previous\n{purge_line}")
