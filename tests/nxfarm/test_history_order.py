"""Scheduling from history (build/priority.py): the longest expected chain first, durations from
the run store; the agent that last built a project preferred while it has a free slot."""

from __future__ import annotations

import secrets

import pytest

from nxfarm.build.priority import DEFAULT_S, expected_seconds, preferred_worker, priorities
from nxfarm.probe.task_graph import parse_task_graph
from nxfarm.runs.report import RunReport, TaskRecord
from nxfarm.runs.store import RunStore
from tests.nx_client.workspace import NX_BIN

from .farm_procs import LocalFarm
from .farm_workspace import PROJECTS, FarmWorkspace


def graph_of(edges: dict[str, list[str]]):
    return parse_task_graph({
        "tasks": {task: {"id": task, "target": {"project": task.split(":")[0], "target": task.split(":")[1]},
                         "cache": True} for task in edges},
        "dependencies": edges})


def test_priority_is_the_longest_expected_chain_a_task_heads():
    graph = graph_of({"a:build": [], "b:build": ["a:build"], "c:build": ["a:build"], "d:build": ["c:build"],
                      "e:test": []})
    history = {"durations": {"a:build": 2.0, "b:build": 30.0, "c:build": 1.0, "d:build": 4.0},
               "target_medians": {"test": 7.0}}
    rank = priorities(graph, set(graph.tasks), history)
    assert rank == {"b:build": 30.0, "d:build": 4.0, "c:build": 5.0, "a:build": 32.0, "e:test": 7.0}
    assert expected_seconds("x:lint", history) == DEFAULT_S, "never seen, nor its target: the default"
    # A chain of 3,000 tasks: no recursion limit.
    chain = {f"p{i}:build": [f"p{i - 1}:build"] if i else [] for i in range(3000)}
    assert priorities(graph_of(chain), set(chain), {})["p0:build"] == 3000 * DEFAULT_S


def test_the_warm_agent_is_preferred_only_while_it_has_a_free_slot():
    history = {"recent_agents": {"app": "agent-2"}}
    workers = {"tls://a1": ("agent-1", 2), "tls://a2": ("agent-2", 2)}
    assert preferred_worker("app:build", history, workers, {"tls://a2": 1}) == "tls://a2"
    assert preferred_worker("app:build", history, workers, {"tls://a2": 2}) is None, "busy: never wait for it"
    assert preferred_worker("lib:build", history, workers, {}) is None, "no agent built it yet"


def test_the_store_answers_with_medians_per_task_and_target_and_the_last_agent(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    for n, (took, agent) in enumerate(((10.0, "agent-1"), (20.0, "agent-1"), (90.0, "agent-2"))):
        at = 1000.0 + 100 * n
        tasks = (TaskRecord("app:build", agent, at, at, at + took, "ok", "executed", ""),
                 TaskRecord("lib:build", agent, at, at, at + 1, "ok", "remote cache", ""))
        store.add(RunReport(f"{n:032x}", "run-many -t build", "", "distributed", "", at, at + took, 0, tasks), "ci")
    known = store.history(["app:build", "lib:build", "web:build"])
    assert known["durations"] == {"app:build": 20.0}, "restored runs say nothing of how long building takes"
    assert known["target_medians"] == {"build": 20.0}
    assert known["recent_agents"] == {"app": "agent-2", "lib": "agent-2"}


pytestmark_nx = pytest.mark.skipif(not NX_BIN.exists(), reason="nx client not installed (make test installs it)")


@pytestmark_nx
@pytest.mark.parametrize("order", ["history", "name"])
def test_history_sends_the_long_chain_first_on_a_busy_farm(tmp_path, order):
    farm = LocalFarm(tmp_path / "farm")
    try:
        farm.start_cache()
        farm.start_scheduler()
        farm.start_agent("agent-1", slots=1)
        # What earlier builds taught the store: lib-e takes long, the rest are quick.
        store = RunStore(farm.runs_db)
        taught = tuple(TaskRecord(f"{name}:build", "agent-1", 10.0, 10.0, 70.0 if name == "lib-e" else 11.0, "ok",
                                  "executed", "") for name in PROJECTS)
        store.add(RunReport("9" * 32, "run-many -t build", "", "distributed", "", 10.0, 70.0, 0, taught), "ci")
        workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
        result = farm.build(workspace.root, "--order", order)
        assert result.returncode == 0, result.stdout + result.stderr
        run = next(run for run in store.recent() if run.report.run_id != "9" * 32)
        store.close()
        started = {task.task_id: task.started for task in run.report.tasks}
        # After lib-a, three are ready at once: lib-b, lib-c, lib-e. One slot runs them one by one.
        first = min(("lib-b:build", "lib-c:build", "lib-e:build"), key=started.__getitem__)
        assert first == ("lib-e:build" if order == "history" else "lib-b:build"), started
    finally:
        farm.stop()


@pytestmark_nx
def test_placing_by_history_keeps_every_agent(tmp_path):
    """Tasks preferred onto one agent while another is idle get stolen by Dask's work stealing;
    the agent's answer (`steal-response`) must pass the role guard, or the agent is cut off."""
    farm = LocalFarm(tmp_path / "farm")
    try:
        farm.start_cache()
        farm.start_scheduler()
        for name in ("agent-1", "agent-2"):
            farm.start_agent(name, slots=1)
        # bench/schedbench.py's graph: ten quick independent tasks and a slow chain of three.
        projects = {**{f"a-{i:02d}": (f"libs/a-{i:02d}", []) for i in range(1, 11)},
                    "z-1": ("libs/z-1", []), "z-2": ("libs/z-2", ["z-1"]), "z-3": ("libs/z-3", ["z-2"])}
        delays = {**{name: 1000 for name in projects}, "z-1": 6000, "z-2": 6000, "z-3": 6000}
        workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4), delays=delays,
                                  projects=projects)
        assert farm.build(workspace.root).returncode == 0  # teaches the store where each project was built
        workspace.new_commit("again")
        workspace.clear_outputs()
        again = farm.build(workspace.root)
        assert again.returncode == 0, again.stdout + again.stderr
        assert "may not call" not in farm.scheduler.log.read_text()
        assert all(agent.running for agent in farm.agents.values()), "no agent was cut off"
        store = RunStore(farm.runs_db)
        latest = store.recent(1)[0].report
        store.close()
        assert {task.agent for task in latest.tasks if task.agent} == {"agent-1", "agent-2"}
    finally:
        farm.stop()
