"""The agent process under systemd's rules: a signal stops it at once, even while it connects;
losing the scheduler ends it with a failure, so `Restart=on-failure` brings it back."""

from __future__ import annotations

import signal
import subprocess
import time

from .farm_procs import NXFARM, LocalFarm, clean_env
from nxfarm.demo.farm import free_port


def agent_args(farm: LocalFarm, scheduler: str, tmp_path) -> list[str]:  # noqa: ANN001
    return [NXFARM, "agent", "run", "--scheduler", scheduler, "--bind", "127.0.0.1", "--slots", "1",
            "--workspace", str(tmp_path / "work"), "--name", "agent-1", "--allow-repo", "*", *farm.tls_args("agent-1")]


def test_sigterm_stops_an_agent_that_is_still_connecting(tmp_path):
    farm = LocalFarm(tmp_path / "farm", agents=1)
    log = tmp_path / "agent.log"
    env = clean_env(tmp_path / "home", NX_SELF_HOSTED_REMOTE_CACHE_SERVER="http://127.0.0.1:9")
    process = subprocess.Popen(agent_args(farm, f"tls://127.0.0.1:{free_port()}", tmp_path), env=env,
                               stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "Waiting to connect" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        time.sleep(1)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0, log.read_text()
        assert time.monotonic() - sent < 5
    finally:
        if process.poll() is None:
            process.kill()


def test_an_agent_that_loses_its_scheduler_exits_with_a_failure(tmp_path):
    farm = LocalFarm(tmp_path / "farm", agents=1)
    try:
        farm.start_cache()
        farm.start_scheduler()
        agent = farm.start_agent("agent-1", slots=1)
        farm.scheduler.kill_group()
        assert agent.proc.wait(120) == 1, agent.log.read_text()[-2000:]
        assert "the worker closed" in agent.log.read_text()
    finally:
        farm.stop()
