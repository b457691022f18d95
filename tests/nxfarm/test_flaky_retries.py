"""A task that fails on an agent is tried once more on another one: passing then, it is flaky
(said in the final table, the summary and the run store); failing twice, the build fails as
before. End to end: real scheduler, two agents, real Nx 24."""

from __future__ import annotations

import re
import secrets

import pytest

from nxfarm.runs.store import RunStore
from tests.nx_client.workspace import NX_BIN

from .farm_procs import final_pass_rows
from .farm_workspace import FarmWorkspace

pytestmark = pytest.mark.skipif(not NX_BIN.exists(), reason="nx client not installed (make test installs it)")


def test_a_task_that_fails_once_is_retried_on_the_other_agent_and_reported_flaky(farm, tmp_path):
    marker = tmp_path / "lib-c-failed-once"
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4),
                              delays={"lib-c": str(marker)})
    result = farm.build(workspace.root)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    failed = re.search(r"FAIL lib-c:build on (agent-\d) \(run, exit \d+\): trying it again on another agent", output)
    assert failed, output
    first = failed.group(1)
    rows = final_pass_rows(result.stdout)
    ran_on, final = rows["lib-c:build"]
    assert ran_on != first and ran_on.startswith("agent-"), "the retry ran on the other agent"
    assert final == "remote cache"
    assert f"FLAKY: failed first on {first}" in result.stdout
    assert "flaky (failed, then passed on another agent): lib-c:build" in result.stdout
    store = RunStore(farm.runs_db)
    (run,) = store.recent()
    store.close()
    lib_c = next(task for task in run.report.tasks if task.task_id == "lib-c:build")
    assert (lib_c.outcome, lib_c.retries, lib_c.agent) == ("ok", 1, ran_on)


@pytest.mark.parametrize("retries", ["1", "0"])
def test_a_task_that_always_fails_fails_the_build_after_its_retries(farm, tmp_path, retries):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4), delays={"lib-e": -1})
    result = farm.build(workspace.root, "--retries", retries)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert output.count("trying it again on another agent") == int(retries)
    assert "FLAKY" not in result.stdout
    assert re.search(r"lib-e:build +agent-\d +\S+ +failed in run \(exit \d+\)", result.stdout), result.stdout
