"""Hand eligible tasks to the Dask scheduler in dependency order and follow them to the end.

A task is submitted only once everything it depends on has succeeded, and no future is
passed between tasks: a lost agent loses only what it was running, which Dask reschedules
on another worker, and outputs travel through the remote cache, never through Dask.
When every worker is gone for `lost_grace` seconds, or the scheduler goes away, the rest is
left to the final local pass (the build does not fail because the farm did).
"""

from __future__ import annotations

import pickle
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..agent.task import run_task
from ..farm.protocol import ProtocolError, TaskRequest, TaskResult
from ..probe.task_graph import TaskGraph
from .priority import preferred_worker, priorities

FAILURE_TAIL_LINES = 20  # of a failed task's log, shown as it fails (the final pass reruns it here)
POLL_S = 0.05  # futures' own state is local: polling costs no round trip


@dataclass
class Outcome:
    task_id: str
    status: str = "queued"  # queued, running, ok, failed, skipped, lost
    result: TaskResult | None = None
    note: str = ""
    queued_at: float = 0.0    # epoch seconds: handed to the scheduler
    finished_at: float = 0.0  # its future completed here
    failed_before: list[TaskResult] = field(default_factory=list)  # attempts that failed, then retried

    @property
    def flaky(self) -> bool:
        """It failed, then passed on the same commit (the same task hash)."""
        return self.status == "ok" and bool(self.failed_before)


@dataclass
class DispatchReport:
    outcomes: dict[str, Outcome]
    fallback: str | None = None  # why the rest was left to the local pass


def eligible_tasks(graph: TaskGraph) -> set[str]:
    """Distributable tasks all of whose dependencies are distributable too: an agent running
    `nx run X` also runs X's dependencies, so one that is not cacheable would be redone there."""
    distributable = graph.distributable()
    memo: dict[str, bool] = {}

    def ok(task: str) -> bool:
        if task not in memo:
            memo[task] = task in distributable and all(ok(dep) for dep in graph.dependencies[task])
        return memo[task]

    return {task for task in graph.tasks if ok(task)}


def _load(client: Any) -> tuple[dict[str, tuple[str, int]], dict[str, int]]:
    """(address -> (agent, slots), address -> tasks it holds now)."""
    try:
        return _workers(client), {address: len(keys) for address, keys in client.processing().items()}
    except Exception:  # noqa: BLE001 - placement is a preference: without it, Dask places
        return {}, {}


def _workers(client: Any) -> dict[str, tuple[str, int]]:
    """address -> (agent name, slots)"""
    workers = client.scheduler_info(n_workers=-1)["workers"]
    return {address: (str(info.get("name", address)), int(info.get("nthreads", 1))) for address, info in workers.items()}


def dispatch(client: Any, graph: TaskGraph, tasks: set[str], request_for: Callable[[str], TaskRequest],
             say: Callable[[str], None], lost_grace: float = 15.0, status_every: float = 5.0,
             retries: int = 1, history: Mapping[str, Any] | None = None) -> DispatchReport:
    """`retries`: how many times a failed task is tried again, each time on an agent that has not
    failed it yet when there is one; a task that passes after failing is reported flaky.
    `history`: what the run store knows (build/priority.py): ready tasks go longest remaining
    chain first, to the agent that last built their project while it has a free slot. Without
    it, ready tasks go in name order, anywhere."""
    build_id = uuid.uuid4().hex[:8]
    outcomes = {task: Outcome(task) for task in tasks}
    waiting = {task: set(graph.dependencies[task]) & tasks for task in tasks}
    futures: dict[Any, str] = {}
    report = DispatchReport(outcomes)
    total = len(tasks)
    finished = 0
    no_workers_since: float | None = None
    last_status = last_check = time.monotonic()

    rank = priorities(graph, tasks, history) if history is not None else {}

    def submit(task: str, avoid: set[str], prefer: str | None = None) -> None:
        others = [address for address, (name, _) in _workers(client).items() if name not in avoid] if avoid else []
        where = others or ([prefer] if prefer else [])
        attempt = len(outcomes[task].failed_before)
        future = client.submit(run_task, request_for(task).to_json(),
                               key=f"nxfarm-{build_id}-{task}" + (f"-retry{attempt}" if attempt else ""), pure=False,
                               workers=where or None, allow_other_workers=bool(where),
                               priority=int(rank.get(task, 0.0) * 1000))
        futures[future] = task
        outcomes[task].status = "running"
        outcomes[task].queued_at = outcomes[task].queued_at or time.time()

    def submit_ready() -> None:
        ready = sorted((t for t, deps in waiting.items() if not deps and outcomes[t].status == "queued"),
                       key=lambda t: (-rank.get(t, 0.0), t))
        if not ready:
            return
        workers, busy = ({}, {}) if not (history and history.get("recent_agents")) else _load(client)
        for task in ready:
            prefer = preferred_worker(task, history or {}, workers, busy)
            if prefer:
                busy[prefer] = busy.get(prefer, 0) + 1
            submit(task, set(), prefer)

    def skip_dependents(task: str) -> None:
        for other in waiting:
            if task in graph.dependencies[other] and outcomes[other].status == "queued":
                outcomes[other].status = "skipped"
                outcomes[other].note = f"needs {task}"
                skip_dependents(other)

    def leave_rest(reason: str) -> DispatchReport:
        for future, task in futures.items():
            future.cancel()
            outcomes[task].status = "lost"
        for outcome in outcomes.values():
            if outcome.status == "queued":
                outcome.status = "lost"
        report.fallback = reason
        say(f"fallback: {reason}; the remaining {sum(o.status == 'lost' for o in outcomes.values())} task(s) "
            "run in the local pass")
        return report

    try:
        submit_ready()
        while futures:
            done = [future for future in futures if future.done()]
            if not done:
                time.sleep(POLL_S)
            for future in done:
                task = futures.pop(future)
                outcome = outcomes[task]
                outcome.finished_at = time.time()
                if future.status == "finished":
                    try:
                        outcome.result = TaskResult.from_json(future.result())
                    except (ProtocolError, pickle.UnpicklingError) as exc:  # a result the farm never sends
                        outcome.status, outcome.note = "lost", f"refused its result: {exc}"
                    else:
                        outcome.status = "ok" if outcome.result.ok else "failed"
                elif future.status == "cancelled":  # the client lost the scheduler: it cancels every future
                    futures[future] = task
                    return leave_rest("lost the scheduler mid-build")
                else:
                    error = future.exception()
                    outcome.status = "lost"
                    outcome.note = f"{type(error).__name__}: {error}" if error else future.status
                if outcome.status == "failed" and outcome.result is not None and len(outcome.failed_before) < retries:
                    failed = outcome.result
                    outcome.failed_before.append(failed)
                    outcome.result = None
                    say(f"[{finished:>{len(str(total))}}/{total}] FAIL {task} on {failed.agent} ({failed.phase}, exit "
                        f"{failed.exit_code}): trying it again on another agent")
                    for line in failed.log_tail.splitlines()[-FAILURE_TAIL_LINES:]:
                        say(f"  {task} on {failed.agent} | {line}")
                    submit(task, {result.agent for result in outcome.failed_before})
                    continue
                finished += 1
                if outcome.status == "ok":
                    for deps in waiting.values():
                        deps.discard(task)
                else:
                    skip_dependents(task)
                say(_event_line(finished, total, outcome))
                if outcome.result is not None and not outcome.result.ok:
                    for line in outcome.result.log_tail.splitlines()[-FAILURE_TAIL_LINES:]:
                        say(f"  {task} on {outcome.result.agent} | {line}")
            submit_ready()
            now = time.monotonic()
            if now - last_check < 1.0 and not done:
                continue
            last_check = now
            names = _workers(client)
            if names:
                no_workers_since = None
            elif futures:
                no_workers_since = no_workers_since or now
                if now - no_workers_since >= lost_grace:
                    return leave_rest(f"every agent left the farm ({lost_grace:g}s without a worker)")
            if futures and now - last_status >= status_every:
                last_status = now
                say(_status_line(client, names, outcomes))
    except (OSError, TimeoutError) as exc:
        return leave_rest(f"lost the scheduler mid-build ({type(exc).__name__}: {exc})")
    except Exception as exc:  # distributed raises its own CommClosedError etc. when the scheduler dies
        if type(exc).__module__.startswith(("distributed", "tornado")):
            return leave_rest(f"lost the scheduler mid-build ({type(exc).__name__})")
        raise
    return report


def _event_line(finished: int, total: int, outcome: Outcome) -> str:
    width = len(str(total))
    result = outcome.result
    if result is None:
        return f"[{finished:>{width}}/{total}] lost  {outcome.task_id}: {outcome.note}"
    how = f", {result.cache}" if result.cache else ""
    mark = "done" if result.ok else f"FAIL ({result.phase}, exit {result.exit_code})"
    tier = f" [{result.tier}]" if result.tier else ""
    return (f"[{finished:>{width}}/{total}] {mark:<4} {outcome.task_id} on {result.agent}{tier} "
            f"({result.seconds:.1f}s{how})")


def _status_line(client: Any, workers: dict[str, tuple[str, int]], outcomes: dict[str, Outcome]) -> str:
    try:
        assigned = {address: len(keys) for address, keys in client.processing().items() if keys}
    except Exception:  # noqa: BLE001 - a status line never stops the build
        assigned = {}
    return status_line(outcomes, {workers.get(address, (address, 1)): n for address, n in assigned.items()})


def status_line(outcomes: dict[str, Outcome], assigned: dict[tuple[str, int], int]) -> str:
    """Pure. `assigned`: (agent, slots) -> tasks the scheduler gave it; Dask hands an agent more
    than it has slots, so only as many as its slots are running and the rest wait there."""
    counts = {status: sum(o.status == status for o in outcomes.values())
              for status in ("queued", "running", "ok", "failed")}
    hits = sum(1 for o in outcomes.values() if o.result and o.result.cache)
    busy = {name: min(n, slots) for (name, slots), n in assigned.items()}
    slots_of = {name: slots for name, slots in assigned}
    running = sum(busy.values())
    per_agent = ", ".join(f"{name}: {n}/{slots_of[name]}" for name, n in sorted(busy.items())) or "-"
    return (f"queued {counts['queued'] + counts['running'] - running} | running {running} ({per_agent} slots) | "
            f"done {counts['ok']} | failed {counts['failed']} | cache hits {hits}")
