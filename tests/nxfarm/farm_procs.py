"""A whole farm on 127.0.0.1 as separate processes: the cache server, `nxfarm scheduler run`
and `nxfarm agent run` workers, each with its own state, all on a private CA. Each process
runs in its own session so a test can kill one agent and everything it started, like a
machine going away."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nxfarm.farm.tls import TlsFiles, write_cluster

from tests.cache_server.server_proc import WRITE_TOKEN, CacheServer

NXFARM = str(Path(sys.executable).with_name("nxfarm"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def clean_env(home: Path | None = None, **extra: str) -> dict[str, str]:
    """The test's environment minus anything Nx, Dask or nxfarm would read. With `home`, the
    process gets a home of its own, like a separate machine: Nx 24 keeps its local cache in
    ~/.nx/<workspace id>/, shared by every checkout of one repository for one user. npm keeps
    the real user's config and package cache."""
    real_home = Path.home()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NX_", "NXFARM_", "DASK_")) and k not in ("FORCE_COLOR", "CI", "DRY_RUN",
                                                                         "DEPLOY_CONFIRM")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost", NX_NO_CLOUD="true",
               NX_DAEMON="false", NX_TUI="false", NO_COLOR="1", **extra)
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
        env["npm_config_cache"] = str(real_home / ".npm")
        if (real_home / ".npmrc").is_file():
            env["NPM_CONFIG_USERCONFIG"] = str(real_home / ".npmrc")
    return env


class Process:
    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path, ready: str,
                 timeout: float = 60) -> None:
        self.name, self.log = name, log
        self.proc = subprocess.Popen(args, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + timeout
        while ready not in log.read_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill_group(self) -> None:
        """SIGKILL the process and everything it started (its session)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill_group()


class LocalFarm:
    def __init__(self, state: Path) -> None:
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.certs: dict[str, TlsFiles] = write_cluster(state / "tls", {
            "scheduler": ("127.0.0.1",), "agent-1": ("127.0.0.1",), "agent-2": ("127.0.0.1",),
            "agent-3": ("127.0.0.1",), "agent-4": ("127.0.0.1",), "orchestrator": ()})
        (state / "cache-state").mkdir(exist_ok=True)
        self.cache = CacheServer(state / "cache-state")
        self.scheduler: Process | None = None
        self.scheduler_port = free_port()
        self.agents: dict[str, Process] = {}

    @property
    def scheduler_address(self) -> str:
        return f"tls://127.0.0.1:{self.scheduler_port}"

    def tls_args(self, member: str) -> list[str]:
        files = self.certs[member]
        return ["--tls-ca", files.ca, "--tls-cert", files.cert, "--tls-key", files.key]

    def start_cache(self) -> None:
        self.cache.start()

    def start_scheduler(self) -> None:
        self.scheduler = Process("scheduler", [NXFARM, "scheduler", "run", "--bind", "127.0.0.1", "--port",
                                               str(self.scheduler_port), "--dashboard-port", "0", "--worker-ttl", "10s",
                                               *self.tls_args("scheduler")],
                                 clean_env(), self.state / "scheduler.log", "nxfarm scheduler at")

    def start_agent(self, name: str, slots: int = 2) -> Process:
        env = clean_env(self.state / name / "home", NX_SELF_HOSTED_REMOTE_CACHE_SERVER=self.cache.url,
                        NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN=WRITE_TOKEN)
        agent = Process(name, [NXFARM, "agent", "run", "--scheduler", self.scheduler_address, "--bind", "127.0.0.1",
                               "--slots", str(slots), "--workspace", str(self.state / name), "--name", name,
                               *self.tls_args(name)], env, self.state / f"{name}.log", f"nxfarm agent {name}")
        self.agents[name] = agent
        return agent

    def orchestrator_env(self, cache: bool = True) -> dict[str, str]:
        files = self.certs["orchestrator"]
        env = clean_env(self.state / "orchestrator-home", NXFARM_SCHEDULER=self.scheduler_address, NXFARM_TLS_CA=files.ca,
                        NXFARM_TLS_CERT=files.cert, NXFARM_TLS_KEY=files.key)
        if cache:
            env.update(NX_SELF_HOSTED_REMOTE_CACHE_SERVER=self.cache.url,
                       NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN=WRITE_TOKEN)
        return env

    def build(self, workspace: Path, *args: str, env: dict[str, str] | None = None,
              timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run([NXFARM, "build", "-t", "build", "--yes", *args], cwd=workspace,
                              env=env or self.orchestrator_env(), capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        if self.scheduler:
            self.scheduler.stop()
        if self.cache.proc is not None and self.cache.proc.poll() is None:
            self.cache.stop()


def final_pass_rows(output: str) -> dict[str, tuple[str, str]]:
    """From the final table: task -> (ran on, final pass)."""
    rows = {}
    lines = output.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("TASK") and "FINAL PASS" in line:
            columns = [m.start() for m in re.finditer(r"\S+(?: \S+)*", line)]
            for row in lines[index + 2:]:
                if not row.strip() or row.startswith("nxfarm:"):
                    break
                cells = [row[start:end].strip() for start, end in zip(columns, columns[1:] + [None])]
                rows[cells[0]] = (cells[1], cells[-1])
    return rows
