"""This build's report to the farm's run store (runs/), and its delivery.

Reporting never slows or fails a build: it happens after the final pass, within `budget`
seconds in all, and whatever could not be sent waits in the outbox for the next build.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..farm.roles import HISTORY_OP, REPORT_RUN_OP
from ..probe.task_graph import TaskGraph
from ..runs.outbox import Outbox
from ..runs.report import RunReport, TaskRecord
from .dispatch import Outcome

REPORT_BUDGET_S = 3.0
SENT_PER_BUILD = 20  # of the outbox, oldest first, besides this build's own


def new_run_id() -> str:
    return uuid.uuid4().hex


def task_records(graph: TaskGraph, outcomes: Mapping[str, Outcome], final: Mapping[str, str]) -> list[TaskRecord]:
    """Pure: one record per task of the graph: where and when it ran on the farm, if it did, and
    what the final pass here made of it."""
    records = []
    for task in graph.tasks:
        outcome = outcomes.get(task)
        result = outcome.result if outcome else None
        needs = tuple(graph.dependencies[task])
        if outcome is None:
            records.append(TaskRecord(task, outcome="ok" if task in final else "not run", final=final.get(task, ""),
                                      needs=needs))
            continue
        finished = outcome.finished_at if result is not None else 0.0
        records.append(TaskRecord(
            task, agent=result.agent if result else "", queued=outcome.queued_at,
            started=max(outcome.queued_at, finished - result.seconds) if result else 0.0, finished=finished,
            outcome=_outcome(outcome), cache=("executed" if result and result.ok and not result.cache else
                                              (result.cache or "") if result else ""),
            final=final.get(task, ""), retries=len(outcome.failed_before), needs=needs))
    return records


def _outcome(outcome: Outcome) -> str:
    return {"ok": "ok", "failed": "failed", "skipped": "skipped", "lost": "lost"}.get(outcome.status, "not run")


def report_mode(distributed: bool, reason: str, dispatch_fallback: str | None) -> tuple[str, str]:
    """Pure: (mode, reason) as the run store keeps them."""
    if dispatch_fallback:
        return "fallback", dispatch_fallback
    if distributed:
        return "distributed", reason
    return ("fallback" if reason.startswith("fallback") else "local"), reason


def deliver(client: Any | None, report: RunReport, outbox: Outbox, budget: float = REPORT_BUDGET_S) -> str:
    """Send what waits in the outbox, then this report, through the scheduler connection; what does
    not go within `budget` seconds (or without a client) waits for the next build. Never raises:
    returns one line for the terminal, "" when all went. The count of reports dropped so far
    travels in this report (`dropped_before`) and is counted again if it cannot be kept."""
    try:
        return _deliver(client, report, outbox, budget)
    except OSError as exc:  # the outbox's directory unwritable, a full disk: the build is not the worse
        return f"run report not kept: {exc.strerror or exc}: {exc.filename or outbox.directory}"


def _deliver(client: Any | None, report: RunReport, outbox: Outbox, budget: float) -> str:
    dropped = outbox.dropped()
    outbox.clear_dropped()
    report = dataclasses.replace(report, dropped_before=report.dropped_before + dropped)
    if client is None:
        outbox.put(report)
        return f"run report kept for the next build that reaches the farm ({len(outbox.waiting())} waiting)"
    deadline = time.monotonic() + budget
    for path in outbox.waiting()[:SENT_PER_BUILD]:
        try:
            waited = RunReport.from_json(path.read_text())
        except (OSError, ValueError):
            waited = None  # damaged: it could never be stored
        answer = "damaged" if waited is None else _send(client, waited, deadline)
        if answer == "later":
            break
        path.unlink(missing_ok=True)
        if answer != "stored":
            outbox.count_dropped(1 + (waited.dropped_before if waited else 0))
    answer = _send(client, report, deadline)
    if answer == "stored":
        return ""
    if answer == "later":
        outbox.put(report)
        return f"run report not delivered in time: kept for the next build ({len(outbox.waiting())} waiting)"
    outbox.count_dropped(1 + report.dropped_before)
    return f"run report not kept by the farm: {answer}"


def history(client: Any, tasks: list[str], budget: float = 2.0) -> dict[str, Any] | None:
    """What the run store knows of these tasks (build/priority.py), or None when the scheduler
    does not answer in time or keeps no store: the build then goes in name order."""
    try:
        answer = client.sync(getattr(client.scheduler, HISTORY_OP), tasks=tasks, callback_timeout=budget)
    except Exception:  # noqa: BLE001 - an older scheduler, a timeout: scheduling without history
        return None
    return answer if isinstance(answer, dict) and answer.get("status") == "OK" else None


def _send(client: Any, report: RunReport, deadline: float) -> str:
    """'stored', 'later' (not reached in time: try again), or why the scheduler refused it."""
    left = deadline - time.monotonic()
    if left <= 0:
        return "later"
    try:
        answer = client.sync(getattr(client.scheduler, REPORT_RUN_OP), report=report.to_json(), callback_timeout=left)
    except PermissionError as exc:  # a scheduler older than run reports
        return str(exc)
    except Exception:  # noqa: BLE001 - timeouts, a closed connection: the next build tries again
        return "later"
    if isinstance(answer, dict) and answer.get("status") == "OK":
        return "stored"
    return str(answer.get("why", answer) if isinstance(answer, dict) else answer)[:200]
