"""The run pages: the timeline's rows and critical path (pure), and the pages the scheduler
serves, driven in Debian's Chromium (headless, real layout and real clicks) after a real
distributed build on this machine's farm."""

from __future__ import annotations

import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from nxfarm.runs.report import RunReport, TaskRecord
from nxfarm.runs.timeline import critical_path, rows_and_bars
from tests.nx_client.workspace import NX_BIN

from .farm_workspace import PROJECTS, FarmWorkspace
from .test_farm_roles import direct_rpc

# Screenshots of the main pages land here when set (for the closing note).
SCREENSHOTS = os.environ.get("NXFARM_SCREENSHOTS")


def record(task: str, agent: str, started: float, finished: float, needs=(), **kw) -> TaskRecord:
    return TaskRecord(task, agent, started - 0.1, started, finished, kw.pop("outcome", "ok"),
                      kw.pop("cache", "executed"), "remote cache", needs=tuple(needs), **kw)


def test_tasks_of_one_agent_fill_as_many_rows_as_ran_at_once_and_the_critical_path_is_the_gating_chain():
    tasks = (record("a:build", "agent-1", 0.0, 2.0), record("b:build", "agent-1", 0.5, 1.0),
             record("c:build", "agent-1", 1.2, 3.0, needs=["b:build"]),
             record("d:build", "agent-2", 2.1, 5.0, needs=["a:build", "b:build"]),
             record("e:lint", "agent-2", 0.0, 0.5, cache="remote cache"),
             record("f:test", "agent-1", 3.0, 3.5, outcome="failed"),
             TaskRecord("g:serve", final="executed here"))
    report = RunReport("1" * 32, "run-many -t build", "", "distributed", "", 0.0, 6.0, 1, tasks)
    labels, bars = rows_and_bars(report)
    rows = {bar.task.task_id: labels[bar.row] for bar in bars}
    assert rows == {"a:build": "agent-1 · slot 1", "b:build": "agent-1 · slot 2", "c:build": "agent-1 · slot 2",
                    "f:test": "agent-1 · slot 1", "d:build": "agent-2 · slot 1", "e:lint": "agent-2 · slot 1"}
    assert {bar.task.task_id: bar.kind for bar in bars}["f:test"] == "failed"
    assert {bar.task.task_id: bar.kind for bar in bars}["e:lint"] == "remote cache"
    assert critical_path(report) == {"d:build", "a:build"}, "d finished last; of what it needed, a finished last"


pytestmark_nx = pytest.mark.skipif(not NX_BIN.exists(), reason="nx client not installed (make test installs it)")


def boxes(chromium) -> dict[str, dict[str, float]]:
    """Each task bar's drawn box, as Chromium laid it out."""
    return chromium.evaluate("""Object.fromEntries([...document.querySelectorAll('svg.timeline rect.bar')].map(r => {
        const b = r.getBoundingClientRect();
        return [r.dataset.task, {x: b.x, right: b.right, y: b.y, critical: r.classList.contains('critical'),
                                 kind: r.getAttribute('class')}]; }))""")


@pytestmark_nx
def test_a_build_shows_up_as_a_run_whose_timeline_chromium_draws_in_dependency_order(farm, tmp_path, chromium):
    workspace = FarmWorkspace(tmp_path / "ws", tmp_path / "origin.git", secrets.token_hex(4))
    assert farm.build(workspace.root).returncode == 0
    chromium.open(farm.pages_url)
    assert chromium.evaluate("document.title") == "Runs · nx-farm"
    assert chromium.evaluate("document.querySelectorAll('tr.run').length") == 1
    if SCREENSHOTS:
        chromium.screenshot(Path(SCREENSHOTS) / "runs.png")
    chromium.click("tr.run a")  # follow the link, as a person would
    assert chromium.evaluate("location.pathname").startswith("/runs/")
    bars = boxes(chromium)
    assert set(bars) == {f"{name}:build" for name in PROJECTS}
    for name, (_, deps) in PROJECTS.items():
        for dep in deps:
            assert bars[f"{dep}:build"]["right"] <= bars[f"{name}:build"]["x"] + 1, \
                f"{dep} is drawn ending before {name}, which needed it, starts"
    critical = [task for task, box in bars.items() if box["critical"]]
    assert critical, "the critical path is marked"
    last = max(bars, key=lambda task: bars[task]["right"])
    assert last in critical, "the task that ended last is on it"
    rows = chromium.evaluate("[...document.querySelectorAll('svg.timeline .row-label')].map(t => t.textContent)")
    assert set(rows) <= {f"agent-{n} · slot {s}" for n in (1, 2) for s in (1, 2)} and rows
    assert chromium.evaluate("document.querySelectorAll('tr.task').length") == len(PROJECTS)
    if SCREENSHOTS:
        chromium.screenshot(Path(SCREENSHOTS) / "run.png")


def test_a_report_cannot_put_markup_or_script_on_the_pages(farm, chromium):
    hostile = RunReport("2" * 32, "<script>document.title='owned'</script><b>bold</b>", "", "local", "<i>x</i>",
                        1.0, 2.0, 0, (TaskRecord("<img src=x onerror=alert(1)>:build", final="executed here"),))
    answer = direct_rpc(farm.scheduler_address, farm.certs["orchestrator"], "nxfarm_report_run",
                        report=hostile.to_json())
    assert answer == {"status": "OK", "stored": True}
    for path in ("", f"runs/{'2' * 32}"):
        chromium.open(farm.pages_url + path)
        assert chromium.evaluate("document.querySelectorAll('script, b, i, img').length") == 0
        assert "owned" not in chromium.evaluate("document.title")
        assert "<script>document.title='owned'</script>" in chromium.evaluate("document.body.innerText"), \
            "shown as text"
    with urllib.request.urlopen(farm.pages_url) as response:
        assert "script-src" not in response.headers["Content-Security-Policy"]  # default-src 'none' covers it
        assert response.headers["Content-Security-Policy"].startswith("default-src 'none'")
    for missing in ("runs/" + "3" * 32, "runs/../../etc/passwd", "nothing-here"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(farm.pages_url + missing)
        assert caught.value.code == 404
