"""The run store: SQLite, one file beside the scheduler (`nxfarm scheduler run --runs-db`).

Schema changes are migrations: numbered scripts applied in order inside one transaction each,
the database's `PRAGMA user_version` saying how many ran. A database newer than this code is
refused (a downgraded farm must not write rows it does not understand). WAL mode, so the web
page can read while the scheduler writes. The oldest runs go once there are more than
`keep_runs`.
"""

from __future__ import annotations

import sqlite3
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .report import RunReport, TaskRecord

MIGRATIONS: tuple[str, ...] = (
    # 1: runs and their tasks
    """
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        orchestrator TEXT NOT NULL,      -- the member named by the sender's certificate
        command TEXT NOT NULL,
        commit_id TEXT NOT NULL,
        mode TEXT NOT NULL,
        reason TEXT NOT NULL,
        started REAL NOT NULL,
        ended REAL NOT NULL,
        exit_code INTEGER NOT NULL,
        received REAL NOT NULL
    );
    CREATE INDEX runs_by_start ON runs(started);
    CREATE TABLE tasks (
        run_id TEXT NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        task_id TEXT NOT NULL,
        position INTEGER NOT NULL,       -- its place in the report (the task graph's order)
        project TEXT NOT NULL,
        target TEXT NOT NULL,
        agent TEXT NOT NULL,
        queued REAL NOT NULL,
        started REAL NOT NULL,
        finished REAL NOT NULL,
        outcome TEXT NOT NULL,
        cache TEXT NOT NULL,
        final TEXT NOT NULL,
        retries INTEGER NOT NULL,
        needs TEXT NOT NULL,             -- the task ids it depends on, space-separated
        PRIMARY KEY (run_id, task_id)
    );
    CREATE INDEX tasks_by_target ON tasks(project, target);
    CREATE INDEX tasks_by_id ON tasks(task_id, finished);
    CREATE INDEX tasks_by_target_only ON tasks(target, finished);
    """,
    # 2: what an orchestrator could not deliver before a run (its outbox overflowed)
    """
    ALTER TABLE runs ADD COLUMN dropped_before INTEGER NOT NULL DEFAULT 0;
    """,
)


class StoreError(Exception):
    """The database cannot be used (newer than this code, not a run store): one line, the fix."""


@dataclass(frozen=True)
class StoredRun:
    report: RunReport
    orchestrator: str
    received: float


class RunStore:
    def __init__(self, path: Path, keep_runs: int = 10_000) -> None:
        self.path, self.keep_runs = path, keep_runs
        path.parent.mkdir(parents=True, exist_ok=True)
        # One connection, used from any thread under a lock: writes are a few ms, and reads for
        # the page are short too.
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA foreign_keys = ON")
        self._db.execute("PRAGMA journal_mode = WAL")
        self.migrate()

    @property
    def version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self, upto: int = len(MIGRATIONS)) -> None:
        with self._lock:
            current = self.version
            if current > len(MIGRATIONS):
                raise StoreError(f"{self.path}: schema version {current} is newer than this nxfarm knows "
                                 f"({len(MIGRATIONS)}): upgrade nxfarm, or move the file away to start afresh")
            for number in range(current, upto):
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for statement in _statements(MIGRATIONS[number]):
                        self._db.execute(statement)
                    self._db.execute(f"PRAGMA user_version = {number + 1}")
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise

    def add(self, report: RunReport, orchestrator: str) -> bool:
        """Store one run; False when a run of this id is already stored (a resend)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT OR IGNORE INTO runs (id, orchestrator, command, commit_id, mode, reason, started, ended, "
                    "exit_code, received, dropped_before) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (report.run_id, orchestrator, report.command, report.commit, report.mode, report.reason,
                     report.started, report.ended, report.exit_code, time.time(), report.dropped_before))
                if cursor.rowcount == 0:
                    self._db.execute("COMMIT")
                    return False
                self._db.executemany(
                    "INSERT OR REPLACE INTO tasks (run_id, task_id, position, project, target, agent, queued, started, "
                    "finished, outcome, cache, final, retries, needs) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [(report.run_id, t.task_id, n, t.project, t.target, t.agent, t.queued, t.started, t.finished,
                      t.outcome, t.cache, t.final, t.retries, " ".join(t.needs)) for n, t in enumerate(report.tasks)])
                self._db.execute("DELETE FROM runs WHERE id IN (SELECT id FROM runs ORDER BY started DESC "
                                 "LIMIT -1 OFFSET ?)", (self.keep_runs,))
                self._db.execute("COMMIT")
                return True
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def recent(self, limit: int = 50) -> list[StoredRun]:
        with self._lock:
            ids = [row[0] for row in self._db.execute("SELECT id FROM runs ORDER BY started DESC LIMIT ?", (limit,))]
        return [run for run in (self.get(run_id) for run_id in ids) if run is not None]

    def get(self, run_id: str) -> StoredRun | None:
        with self._lock:
            row = self._db.execute("SELECT command, commit_id, mode, reason, started, ended, exit_code, dropped_before, "
                                   "orchestrator, received FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                return None
            tasks = self._db.execute("SELECT task_id, agent, queued, started, finished, outcome, cache, final, retries, "
                                     "needs FROM tasks WHERE run_id = ? ORDER BY position", (run_id,)).fetchall()
        report = RunReport(run_id, row[0], row[1], row[2], row[3], row[4], row[5], row[6],
                           tuple(_task(row) for row in tasks), row[7])
        return StoredRun(report, row[8], row[9])

    def history(self, task_ids: list[str], per_task: int = 20) -> dict[str, dict[str, Any]]:
        """What scheduling needs to know of these tasks: the median time each took where it was
        executed (its last `per_task` runs), the median per target over every project (for tasks
        never executed yet), and the agent that last ran a task of each project."""
        projects = sorted({task.split(":", 1)[0] for task in task_ids})
        targets = sorted({task.split(":")[1] for task in task_ids if ":" in task})
        with self._lock:
            samples: dict[str, list[float]] = {}
            for task in set(task_ids):
                rows = self._db.execute(
                    "SELECT finished - started FROM tasks WHERE task_id = ? AND cache = 'executed' AND outcome = 'ok' "
                    "AND started > 0 ORDER BY finished DESC LIMIT ?", (task, per_task)).fetchall()
                if rows:
                    samples[task] = [row[0] for row in rows]
            by_target = {target: [row[0] for row in self._db.execute(
                "SELECT finished - started FROM tasks WHERE target = ? AND cache = 'executed' AND outcome = 'ok' "
                "AND started > 0 ORDER BY finished DESC LIMIT 200", (target,))] for target in targets}
            recent = {}
            for project in projects:
                row = self._db.execute("SELECT agent FROM tasks WHERE project = ? AND agent != '' AND finished > 0 "
                                       "ORDER BY finished DESC LIMIT 1", (project,)).fetchone()
                if row:
                    recent[project] = row[0]
        return {"durations": {task: statistics.median(values) for task, values in samples.items()},
                "target_medians": {target: statistics.median(values) for target, values in by_target.items() if values},
                "recent_agents": recent}

    def durations(self, project: str, target: str, limit: int = 20) -> list[float]:
        """How long the task took where it executed (not restored), newest first."""
        with self._lock:
            rows = self._db.execute("SELECT finished - started FROM tasks WHERE project = ? AND target = ? AND "
                                    "cache = 'executed' AND outcome = 'ok' AND started > 0 ORDER BY finished DESC "
                                    "LIMIT ?", (project, target, limit)).fetchall()
        return [row[0] for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _task(row: tuple) -> TaskRecord:
    task_id, agent, queued, started, finished, outcome, cache, final, retries, needs = row
    return TaskRecord(task_id, agent, queued, started, finished, outcome, cache, final, retries, tuple(needs.split()))


def _statements(script: str) -> list[str]:
    """A migration's statements (none contains a semicolon inside it)."""
    lines = [line.split("--", 1)[0] for line in script.splitlines()]
    return [statement.strip() for statement in "\n".join(lines).split(";") if statement.strip()]
