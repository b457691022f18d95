"""Every `nxfarm build` reports its run to the farm's run store (the scheduler's `--runs-db`),
end to end on this machine: real `nxfarm scheduler run` and agents, real Nx 24, mutual TLS.
The report is stored under the member the sender's certificate names; only orchestrators may
send one; a build that cannot reach the scheduler keeps its report and the next one delivers it."""

from __future__ import annotations

import json
import secrets
import subprocess

import pytest

from nxfarm.runs.report import RunReport
from nxfarm.runs.store import RunStore
from tests.nx_client.workspace import NX_BIN

from .farm_workspace import PROJECTS, FarmWorkspace
from .test_farm_roles import direct_rpc

pytestmark = pytest.mark.skipif(not NX_BIN.exists(), reason="nx client not installed (make test installs it)")


def stored_runs(farm) -> list:
    store = RunStore(farm.runs_db)
    try:
        return list(reversed(store.recent()))  # oldest first
    finally:
        store.close()


def test_a_distributed_build_is_kept_with_where_and_when_each_task_ran(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    result = farm.build(workspace.root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "run report" not in result.stdout + result.stderr, "a delivered report says nothing"
    (run,) = stored_runs(farm)
    report = run.report
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace.root, capture_output=True, text=True).stdout
    assert (run.orchestrator, report.mode, report.commit, report.exit_code) == ("orchestrator", "distributed",
                                                                                 head.strip(), 0)
    assert report.command == "run-many -t build"
    tasks = {task.task_id: task for task in report.tasks}
    assert set(tasks) == {f"{name}:build" for name in PROJECTS}
    for task in tasks.values():
        assert task.agent in ("agent-1", "agent-2") and task.outcome == "ok" and task.cache == "executed"
        assert task.final == "remote cache"
        assert report.started <= task.queued <= task.started <= task.finished <= report.ended
    for name, (_, deps) in PROJECTS.items():
        for dep in deps:
            assert tasks[f"{dep}:build"].finished <= tasks[f"{name}:build"].queued, "a task waits for what it needs"


def test_a_report_waits_while_the_scheduler_is_down_and_the_next_build_delivers_it(farm, tmp_path):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    farm.scheduler.stop()
    down = farm.build(workspace.root)
    assert down.returncode == 0, down.stdout + down.stderr
    assert "nxfarm: run report kept for the next build that reaches the farm (1 waiting)" in down.stdout
    outbox = farm.state / "orchestrator-home" / ".local" / "state" / "nx-farm" / "runs-outbox"
    assert len(list(outbox.glob("*.json"))) == 1
    farm.start_scheduler()
    up = farm.build(workspace.root)
    assert up.returncode == 0, up.stdout + up.stderr
    first, second = stored_runs(farm)
    assert first.report.mode == "fallback" and "scheduler unreachable" in first.report.reason
    assert first.report.commit and all(task.agent == "" for task in first.report.tasks), "it all ran here"
    assert second.report.started > first.report.ended
    assert list(outbox.glob("*.json")) == []


def test_only_orchestrators_report_and_a_bad_report_stores_nothing(farm):
    good = RunReport("0" * 32, "run-many -t build", "", "local", "asked", 1.0, 2.0, 0)
    refused = direct_rpc(farm.scheduler_address, farm.certs["agent-1"], "nxfarm_report_run", report=good.to_json())
    assert refused["status"] == "uncaught-error" and "may not call 'nxfarm_report_run'" in refused["exception_text"]
    bad = json.loads(good.to_json()) | {"mode": "sideways"}
    answer = direct_rpc(farm.scheduler_address, farm.certs["orchestrator"], "nxfarm_report_run", report=json.dumps(bad))
    assert answer == {"status": "refused", "why": "RunReport.mode: one of distributed, local, fallback expected"}
    assert stored_runs(farm) == []
    stored = direct_rpc(farm.scheduler_address, farm.certs["orchestrator"], "nxfarm_report_run", report=good.to_json())
    assert stored == {"status": "OK", "stored": True}
    assert [run.orchestrator for run in stored_runs(farm)] == ["orchestrator"]
