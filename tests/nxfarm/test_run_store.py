"""The run store (runs/store.py: SQLite with migrations), the report a build sends (runs/report.py),
the outbox that keeps reports the farm could not take (runs/outbox.py) and what a build makes
of its outcomes (build/runlog.py)."""

from __future__ import annotations

import json
import sqlite3

import pytest

from nxfarm.build.dispatch import Outcome
from nxfarm.build.runlog import deliver, report_mode, task_records
from nxfarm.farm.protocol import ProtocolError, TaskResult
from nxfarm.probe.task_graph import parse_task_graph
from nxfarm.runs.outbox import Outbox
from nxfarm.runs.report import RunReport, TaskRecord
from nxfarm.runs.store import MIGRATIONS, RunStore, StoreError


def report(run_id: str = "a" * 32, started: float = 100.0, tasks: tuple[TaskRecord, ...] = (), **kw) -> RunReport:
    values = dict(command="run-many -t build", commit="c" * 40, mode="distributed", reason="distributing over 2",
                  started=started, ended=started + 10, exit_code=0, tasks=tasks)
    values.update(kw)
    return RunReport(run_id, **values)


TASKS = (TaskRecord("lib:build", agent="agent-1", queued=100.5, started=100.7, finished=103.0, outcome="ok",
                    cache="executed", final="remote cache"),
         TaskRecord("app:build", agent="agent-2", queued=103.1, started=103.2, finished=103.4, outcome="ok",
                    cache="remote cache", final="remote cache", needs=("lib:build",)),
         TaskRecord("app:serve", final="executed here"))


def test_a_report_survives_json_and_anything_else_is_refused_by_field():
    sent = report(tasks=TASKS)
    assert RunReport.from_json(sent.to_json()) == sent
    good = json.loads(sent.to_json())
    bad_cases = {
        "RunReport.run_id: 32 lowercase hex": {**good, "run_id": "../../etc"},
        "RunReport.mode: one of": {**good, "mode": "sideways"},
        "RunReport.started: a finite time": {**good, "started": float("nan")},
        "RunReport.exit_code: int expected": {**good, "exit_code": "0"},
        "RunReport.command: longer than": {**good, "command": "x" * 5000},
        "RunReport: unknown field(s) pickle": {**good, "pickle": "..."},
        "TaskRecord.outcome: one of": {**good, "tasks": [{**good["tasks"][0], "outcome": "maybe"}]},
        "TaskRecord.cache: one of": {**good, "tasks": [{**good["tasks"][0], "cache": "nearby"}]},
        "TaskRecord.task_id: missing": {**good, "tasks": [{"agent": "x"}]},
        "RunReport.tasks: a list of at most": {**good, "tasks": [{"task_id": "a:b"}] * 20_001},
    }
    for expected, data in bad_cases.items():
        with pytest.raises(ProtocolError, match=expected.replace("(", r"\(").replace(")", r"\)")):
            RunReport.from_json(json.dumps(data))


def test_the_store_keeps_runs_and_their_tasks_once(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite")
    assert store.version == len(MIGRATIONS)
    assert store.add(report(tasks=TASKS), "ci-main") is True
    assert store.add(report(tasks=TASKS), "ci-main") is False, "a resend stores nothing twice"
    kept = store.get("a" * 32)
    assert kept is not None and kept.orchestrator == "ci-main" and kept.report == report(tasks=TASKS)
    assert store.durations("lib", "build") == [pytest.approx(2.3)]
    assert store.durations("app", "build") == [], "a restored task says nothing of how long building takes"
    store.close()
    reopened = RunStore(tmp_path / "runs.sqlite")
    assert [run.report.run_id for run in reopened.recent()] == ["a" * 32]


def test_the_oldest_runs_go_past_the_cap(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite", keep_runs=3)
    for n in range(5):
        store.add(report(f"{n:032x}", started=100.0 + n, tasks=TASKS), "ci")
    assert [run.report.run_id for run in store.recent()] == [f"{n:032x}" for n in (4, 3, 2)]
    rows = sqlite3.connect(tmp_path / "runs.sqlite").execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
    assert rows == 3 * len(TASKS), "a run's tasks go with it"


def test_an_older_database_is_migrated_in_place_and_a_newer_one_refused(tmp_path):
    path = tmp_path / "runs.sqlite"
    db = sqlite3.connect(path)  # a store as the first release made it: migration 1 only
    for statement in MIGRATIONS[0].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("PRAGMA user_version = 1")
    db.execute("INSERT INTO runs VALUES ('%s', 'laptop', 'run x:y', '', 'local', 'asked', 1, 2, 0, 3)" % ("b" * 32))
    db.execute("INSERT INTO tasks VALUES ('%s', 'x:y', 0, 'x', 'y', '', 0, 0, 0, 'ok', '', 'executed here', 0, '')"
               % ("b" * 32))
    db.commit()
    db.close()
    store = RunStore(path)
    assert store.version == 2
    kept = store.get("b" * 32)
    assert kept is not None and kept.orchestrator == "laptop" and kept.report.dropped_before == 0
    assert [task.task_id for task in kept.report.tasks] == ["x:y"]
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this nxfarm knows"):
        RunStore(path)


def test_a_builds_records_say_where_when_and_how_each_task_ran():
    graph = parse_task_graph({
        "tasks": {task: {"id": task, "target": {"project": task.split(":")[0], "target": task.split(":")[1]},
                         "cache": True} for task in ("lib:build", "app:build", "app:lint")},
        "dependencies": {"lib:build": [], "app:build": ["lib:build"], "app:lint": []}})
    lib = Outcome("lib:build", "ok", TaskResult("lib:build", "agent-1", 0, 2.0, None, ""), queued_at=10.0,
                  finished_at=12.5)
    app = Outcome("app:build", "failed", TaskResult("app:build", "agent-2", 1, 1.0, None, "boom"), queued_at=12.6,
                  finished_at=13.8)
    records = {r.task_id: r for r in task_records(graph, {"lib:build": lib, "app:build": app},
                                                  {"lib:build": "remote cache", "app:lint": "executed here"})}
    assert records["lib:build"] == TaskRecord("lib:build", "agent-1", 10.0, 10.5, 12.5, "ok", "executed", "remote cache")
    assert records["app:build"].needs == ("lib:build",)
    assert records["app:build"].outcome == "failed" and records["app:build"].final == ""
    assert records["app:lint"] == TaskRecord("app:lint", outcome="ok", final="executed here")
    assert report_mode(True, "distributing over 2", None) == ("distributed", "distributing over 2")
    assert report_mode(True, "distributing", "every agent left") == ("fallback", "every agent left")
    assert report_mode(False, "fallback: scheduler unreachable", None)[0] == "fallback"
    assert report_mode(False, "building locally as asked", None)[0] == "local"


class _Scheduler:
    """Stands in for `client.scheduler` and `client.sync` (the real ones: test_run_reports.py)."""

    def __init__(self, answers):
        self.answers, self.sent = list(answers), []

    def nxfarm_report_run(self, report):
        self.sent.append(RunReport.from_json(report).run_id)
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    @property
    def scheduler(self):
        return self

    def sync(self, function, callback_timeout=None, **kwargs):
        return function(**kwargs)


def test_reports_wait_in_the_outbox_and_go_oldest_first_with_what_was_dropped(tmp_path):
    outbox = Outbox(tmp_path / "outbox", limit=2)
    for n in range(3):  # the farm unreachable three times: the oldest goes, counted
        assert "kept for the next build" in deliver(None, report(f"{n:032x}", started=float(n)), outbox)
    assert [p.name.split("-")[1] for p in outbox.waiting()] == [f"{n:032x}.json" for n in (1, 2)]
    assert outbox.dropped() == 1
    farm = _Scheduler([{"status": "OK", "stored": True}] * 3)
    assert deliver(farm, report("f" * 32, started=9.0), outbox) == ""
    assert farm.sent == [f"{1:032x}", f"{2:032x}", "f" * 32] and outbox.waiting() == [] and outbox.dropped() == 0
    # A scheduler that times out keeps this build's report for later; one that refuses it counts it.
    assert "kept for the next build" in deliver(_Scheduler([TimeoutError()]), report("e" * 32), outbox)
    assert len(outbox.waiting()) == 1
    refusing = _Scheduler([{"status": "OK"}, {"status": "refused", "why": "this scheduler keeps no run store"}])
    assert deliver(refusing, report("d" * 32), outbox) == "run report not kept by the farm: this scheduler keeps no run store"
    assert outbox.waiting() == [] and outbox.dropped() == 1


def test_an_outbox_that_cannot_be_written_costs_the_report_not_the_build(tmp_path):
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("a file where the outbox's directory would go")
    line = deliver(None, report(), Outbox(blocked / "outbox"))
    assert line.startswith("run report not kept: ") and "not-a-directory" in line
