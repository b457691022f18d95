"""A whole farm on 127.0.0.1 as separate processes: the cache server, `nxfarm scheduler run`
and `nxfarm agent run` workers, each with its own state and home (like separate machines),
all on a fresh private CA and generated tokens. Each process runs in its own session, so
stopping one stops everything it started; `stop()` stops only processes this farm started.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from ..farm.tls import CertPair, TlsFiles, write_cluster

NXFARM = str(Path(sys.executable).with_name("nxfarm"))
DEVELOPER_NAMESPACE = "local"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """This environment minus anything Nx, Dask or nxfarm would read. With `home`, the process
    gets a home of its own, like a separate machine: Nx 24 keeps its local cache in
    ~/.nx/<workspace id>/, shared by every checkout of one repository for one user. npm keeps
    the real user's config and package cache."""
    real_home = Path.home()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NX_", "NXFARM_", "DASK_"))
           and k not in ("FORCE_COLOR", "CI", "DRY_RUN", "DEPLOY_CONFIRM")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", NX_NO_CLOUD="true",
               NX_DAEMON="false", NX_TUI="false", NO_COLOR="1", PYTHONUNBUFFERED="1", **extra)
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
        env["npm_config_cache"] = str(real_home / ".npm")
        if (real_home / ".npmrc").is_file():
            env["NPM_CONFIG_USERCONFIG"] = str(real_home / ".npmrc")
    return env


class Process:
    """One farm process; `ready` is a regex its log prints once it serves."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, ready: str,
                 timeout: float = 60) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while not (match := re.search(ready, log.read_text())):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.match = match

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (its session)."""
        if self.running:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.running:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        try:  # whatever the group left behind (a task's node process), then reap
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)


class LocalFarm:
    def __init__(self, state: Path, agents: int = 4, ca: CertPair | None = None) -> None:
        from cache_server.auth import Scope, token_line  # the cache server package (not an nxfarm dependency)

        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        members = {"scheduler": ("scheduler", ("127.0.0.1",)), "orchestrator": ("orchestrator", ())}
        members.update({f"agent-{n}": ("agent", ("127.0.0.1",)) for n in range(1, agents + 1)})
        self.certs: dict[str, TlsFiles] = write_cluster(state / "tls", members, ca)
        self.token = secrets.token_urlsafe(32)  # trusted: this machine's own builds, and agents on protected branches
        self.branch_token = secrets.token_urlsafe(32)  # agents building any other commit: never the trusted namespace
        # `nxfarm farm up`'s developer: writes its own namespace, reads trusted outputs through it
        self.developer_token = secrets.token_urlsafe(32)
        self.storage = state / "cache"
        self.tokens_file = state / "cache-tokens"
        self.tokens_file.write_text(token_line("farm", Scope.READWRITE, self.token, ("trusted",))
                                    + token_line("farm-branch", Scope.READWRITE, self.branch_token, ("*",))
                                    + token_line("developer", Scope.READWRITE, self.developer_token,
                                                 (DEVELOPER_NAMESPACE,)))
        self.tokens_file.chmod(0o600)
        self.cache: Process | None = None
        self.cache_url = ""
        self.scheduler: Process | None = None
        self.scheduler_port = free_port()
        self.pages_url = ""  # the run pages, once the scheduler serves them
        self.agents: dict[str, Process] = {}

    @property
    def scheduler_address(self) -> str:
        return f"tls://127.0.0.1:{self.scheduler_port}"

    def tls_args(self, member: str) -> list[str]:
        files = self.certs[member]
        return ["--tls-ca", files.ca, "--tls-cert", files.cert, "--tls-key", files.key]

    def start_cache(self) -> None:
        self.cache = Process("cache", [sys.executable, "-m", "cache_server", "--bind", "127.0.0.1:0", "--storage",
                                       str(self.storage), "--tokens", str(self.tokens_file)],
                             clean_env(), self.state / "cache.log", r"listening on (http://127\.0\.0\.1:\d+)")
        self.cache_url = self.cache.match.group(1)

    @property
    def runs_db(self) -> Path:
        """Every build's report (runs/store.py), kept with the cache between runs of the farm."""
        return self.state / "runs.sqlite"

    def start_scheduler(self) -> None:
        self.scheduler = Process("scheduler", [NXFARM, "scheduler", "run", "--bind", "127.0.0.1", "--port",
                                               str(self.scheduler_port), "--dashboard-port", "0", "--worker-ttl", "10s",
                                               "--runs-db", str(self.runs_db), "--pages-bind", "127.0.0.1",
                                               "--pages-port", "0", *self.tls_args("scheduler")],
                                 clean_env(), self.state / "scheduler.log",
                                 r"nxfarm scheduler at .*run pages (http://127\.0\.0\.1:\d+/)")
        self.pages_url = self.scheduler.match.group(1)

    def start_agent(self, name: str, slots: int = 2, allow: str = "*", protected: str = "main") -> Process:
        """An agent that fetches from any repository (`allow`: this machine's own) and trusts
        commits on `protected` branches."""
        env = clean_env(self.state / name / "home", NX_SELF_HOSTED_REMOTE_CACHE_SERVER=self.cache_url,
                        NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN=self.token, NXFARM_CACHE_BRANCH_TOKEN=self.branch_token)
        agent = Process(name, [NXFARM, "agent", "run", "--scheduler", self.scheduler_address, "--bind", "127.0.0.1",
                               "--slots", str(slots), "--workspace", str(self.state / name / "work"), "--name", name,
                               "--allow-repo", allow, "--protected-branch", protected, *self.tls_args(name)],
                        env, self.state / f"{name}.log", f"nxfarm agent {name}")
        self.agents[name] = agent
        return agent

    def orchestrator_env(self, home: Path | None = None, cache: bool = True) -> dict[str, str]:
        files = self.certs["orchestrator"]
        env = clean_env(home or self.state / "orchestrator-home", NXFARM_SCHEDULER=self.scheduler_address,
                        NXFARM_TLS_CA=files.ca, NXFARM_TLS_CERT=files.cert, NXFARM_TLS_KEY=files.key)
        if cache:
            env.update(NX_SELF_HOSTED_REMOTE_CACHE_SERVER=self.cache_url,
                       NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN=self.token)
        return env

    def developer_env(self) -> dict[str, str]:
        """What `nxfarm build` in any of this machine's workspaces needs to use this farm. Agents
        here fetch commits from the workspace's own repository, so no remote is needed; the
        developer's outputs go to their own namespace (a commit that is not on a protected branch
        is built into it by agents too) and trusted outputs are read through it."""
        files = self.certs["orchestrator"]
        return {"NXFARM_SCHEDULER": self.scheduler_address, "NXFARM_TLS_CA": files.ca,
                "NXFARM_TLS_CERT": files.cert, "NXFARM_TLS_KEY": files.key,
                "NX_SELF_HOSTED_REMOTE_CACHE_SERVER": f"{self.cache_url}/ns/{DEVELOPER_NAMESPACE}",
                "NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN": self.developer_token,
                "NXFARM_FETCH_FROM": "workspace"}

    def build(self, workspace: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([NXFARM, "build", "-t", "build", "--yes", *args], cwd=workspace,
                              env=env or self.orchestrator_env(), capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for process in [*self.agents.values(), self.scheduler, self.cache]:
            if process is not None:
                process.stop()
