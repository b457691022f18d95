"""`nxfarm build` end to end on this machine: the real cache server, `nxfarm scheduler run` and
two `nxfarm agent run` workers as separate processes on 127.0.0.1 (each agent with its own
home and checkouts, like separate machines), the real `nx` 24 client, a 9-project workspace
with diamonds in a git repository the agents fetch from."""

from __future__ import annotations

import secrets
import subprocess
import time

import psutil
import pytest

from tests.nx_client.workspace import NX_BIN

from .farm_procs import NXFARM, clean_env, final_pass_rows
from .farm_workspace import PROJECTS, FarmWorkspace

pytestmark = pytest.mark.skipif(not NX_BIN.exists(), reason="nx client not installed (make test installs it)")
TASKS = {f"{name}:build" for name in PROJECTS}


def plain_local_build(tmp_path, workspace: FarmWorkspace):
    """The same commit built by plain `nx` in a clone of its own, without any remote cache."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    clone = tmp_path / "plain"
    subprocess.run(["git", "clone", "--quiet", "--branch", "main", str(workspace.origin), str(clone)], check=True)
    (clone / "node_modules").symlink_to(NX_BIN.parents[3])
    result = subprocess.run(["node", str(NX_BIN), "run-many", "-t", "build"], cwd=clone,
                            env=clean_env(tmp_path / "plain-home"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    plain = FarmWorkspace.__new__(FarmWorkspace)
    plain.root, plain.projects = clone, workspace.projects
    return plain.outputs()


def test_every_task_runs_on_the_agents_and_outputs_match_a_plain_local_build(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    result = farm.build(workspace.root)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = final_pass_rows(result.stdout)
    assert set(rows) == TASKS
    assert {ran_on for ran_on, _ in rows.values()} <= {"agent-1", "agent-2"}
    assert all(final == "remote cache" for _, final in rows.values()), rows
    assert workspace.executed() == [], "the final pass must restore every task, not run it here"
    assert "final pass: 9/9 task(s) restored from cache, 0 executed here; nx exited 0" in result.stdout
    assert workspace.outputs() == plain_local_build(tmp_path, workspace)
    assert len(workspace.outputs()) == 3 * len(PROJECTS)


def test_a_worker_killed_mid_build_does_not_fail_the_build(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4), delays={"*": 1500})
    process = subprocess.Popen([NXFARM, "build", "-t", "build", "--yes"], cwd=workspace.root,
                               env=farm.orchestrator_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    lines, killed = [], None
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        # After the first task, kill an agent that is busy: its process group, tasks included.
        if killed is None and line.startswith("nxfarm: [") and "done" in line:
            deadline = time.monotonic() + 20
            while not (busy := [name for name, agent in farm.agents.items() if _children(agent.proc.pid)]):
                assert time.monotonic() < deadline, "no agent started the next tasks"
                time.sleep(0.05)
            killed = busy[0]
            farm.agents[killed].kill_group()
    assert process.wait(600) == 0, "".join(lines)
    output = "".join(lines)
    assert any(line.startswith("nxfarm: queued ") and "running " in line for line in lines), "live status lines"
    rows = final_pass_rows(output)
    assert set(rows) == TASKS
    survivor = "agent-2" if killed == "agent-1" else "agent-1"
    later = [ran_on for ran_on, _ in rows.values()]
    assert survivor in later, output
    assert workspace.outputs() == plain_local_build(tmp_path, workspace)


def test_a_scheduler_killed_mid_build_leaves_the_rest_to_the_local_pass(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4), delays={"*": 1500})
    process = subprocess.Popen([NXFARM, "build", "-t", "build", "--yes"], cwd=workspace.root,
                               env=farm.orchestrator_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("nxfarm: [") and "done" in line and farm.scheduler.running:
            farm.scheduler.kill_group()
    output = "".join(lines)
    assert process.wait(600) == 0, output
    assert "nxfarm: fallback: lost the scheduler mid-build" in output
    assert workspace.outputs() == plain_local_build(tmp_path, workspace)


def test_when_every_agent_is_lost_the_rest_runs_locally(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4), delays={"*": 1500})
    process = subprocess.Popen([NXFARM, "build", "-t", "build", "--yes", "--lost-grace", "3"],
                               cwd=workspace.root, env=farm.orchestrator_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    lines = []
    assert process.stdout is not None
    for line in process.stdout:
        lines.append(line)
        if line.startswith("nxfarm: [") and "done" in line and any(a.proc.poll() is None for a in farm.agents.values()):
            for agent in farm.agents.values():
                agent.kill_group()
    output = "".join(lines)
    assert process.wait(600) == 0, output
    assert "fallback: every agent left the farm (3s without a worker)" in output
    rows = final_pass_rows(output)
    executed_here = {task for task, (_, final) in rows.items() if final == "executed here"}
    assert executed_here and {f"{name}:build" for name in workspace.executed()} == executed_here
    assert workspace.outputs() == plain_local_build(tmp_path, workspace)


def _children(pid: int) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(pid).children(recursive=True):
        try:
            if "node" in child.name():
                found.append(child)
        except psutil.NoSuchProcess:
            continue  # a short-lived helper exited between the listing and the look
    return found


def test_a_failing_task_fails_the_build_with_nx_exit_code_and_says_where(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4), delays={"lib-d": -1})
    result = farm.build(workspace.root)
    assert result.returncode == 1, result.stdout + result.stderr  # Nx's own exit code for a failed run
    rows = final_pass_rows(result.stdout)
    assert rows["lib-d:build"][0] in ("agent-1", "agent-2") and rows["lib-d:build"][1] == "executed here"
    assert "failed in run (exit 1)" in result.stdout and "skipped: needs lib-d:build" in result.stdout
    assert rows["lib-c:build"][1] == "remote cache" and rows["app-3:build"][1] == "remote cache"
    assert rows["app-1:build"][1] == "not run", "Nx stops at the failed dependency here as well"
    agent = rows["lib-d:build"][0]
    assert f"nxfarm:   lib-d:build on {agent} | [build.js] lib-d: failing as tools/delay.json says" in result.stdout, \
        "the agent's log tail is shown when its task fails"


def test_no_workers_then_scheduler_down_then_cache_down_each_build_still_succeeds_locally(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    steps = [
        (lambda: [agent.stop() for agent in farm.agents.values()],
         "fallback: building locally with the remote cache: the scheduler has no workers"),
        (farm.scheduler.stop, "fallback: building locally with the remote cache: scheduler unreachable"),
        (farm.cache.stop, "fallback: building locally without the remote cache: cache server"),
    ]
    for number, (break_something, fallback_line) in enumerate(steps):
        break_something()
        workspace.new_commit(f"step-{number}")  # new task hashes: nothing can come from any cache
        workspace.clear_outputs()
        result = farm.build(workspace.root)
        assert result.returncode == 0, result.stdout + result.stderr
        assert fallback_line in result.stdout
        assert sorted(workspace.executed()) == sorted(PROJECTS)
        assert workspace.outputs() == plain_local_build(tmp_path / f"plain-{number}", workspace)


def test_dry_run_prints_the_plan_and_runs_nothing(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    for args, env in ((["--dry-run"], {}), ([], {"DRY_RUN": "1"})):
        result = farm.build(workspace.root, *args, env={**farm.orchestrator_env(), **env})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "dry run: nothing was run" in result.stdout
        assert "eligible agents: agent-1 (2 slots), agent-2 (2 slots)" in result.stdout
        order = [line.split()[1] for line in result.stdout.splitlines() if line.strip()[:1].isdigit()]
        assert order.index("lib-a:build") < order.index("lib-d:build") < order.index("lib-f:build") \
            < order.index("app-1:build")
    assert workspace.executed() == [] and workspace.outputs() == {}
    assert farm.entry_files() == []


def test_without_yes_and_without_a_terminal_nothing_runs(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    result = subprocess.run([NXFARM, "build", "-t", "build"], cwd=workspace.root, env=farm.orchestrator_env(),
                            capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    assert result.returncode == 2
    assert "pass --yes (or set DEPLOY_CONFIRM=yes)" in result.stdout
    assert workspace.executed() == []
    result = farm.build(workspace.root, "--local", env={**farm.orchestrator_env(), "DEPLOY_CONFIRM": "yes"})
    assert result.returncode == 0 and "building locally as asked" in result.stdout


def test_a_dirty_tree_or_an_unpushed_commit_is_refused_by_name(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    (workspace.root / "libs" / "lib-a" / "src" / "index.js").write_text("// changed\n")
    result = farm.build(workspace.root)
    assert result.returncode == 2
    assert "uncommitted changes (1: libs/lib-a/src/index.js)" in result.stderr
    subprocess.run(["git", "-C", str(workspace.root), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                    "commit", "-qam", "local only"], check=True)
    commit = subprocess.run(["git", "-C", str(workspace.root), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    result = farm.build(workspace.root)
    assert result.returncode == 2
    assert f"commit {commit[:12]} is not on remote 'origin'" in result.stderr
    assert workspace.executed() == []


def test_cluster_listeners_are_on_the_given_address_only_and_need_the_farm_ca(farm, tmp_path):
    for process in [farm.scheduler.proc, *(agent.proc for agent in farm.agents.values())]:
        listening = [c.laddr for c in psutil.Process(process.pid).net_connections("inet") if c.status == "LISTEN"]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening

    from nxfarm.farm.tls import write_cluster
    rogue = write_cluster(tmp_path / "rogue", {"orchestrator": ("orchestrator", ())})["orchestrator"]
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    env = {**farm.orchestrator_env(), "NXFARM_TLS_CA": rogue.ca, "NXFARM_TLS_CERT": rogue.cert,
           "NXFARM_TLS_KEY": rogue.key}
    started = time.monotonic()
    result = farm.build(workspace.root, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fallback: building locally with the remote cache: scheduler unreachable" in result.stdout
    assert time.monotonic() - started < 120
    assert sorted(workspace.executed()) == sorted(PROJECTS)
