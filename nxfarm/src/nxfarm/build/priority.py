"""Which ready task goes first, and where, from the run store's history (runs/store.py).

Priority is a task's critical path to the end of the build: its own expected duration plus the
longest chain of dependents after it, with durations from history (the median of its last
executed runs; for a task never executed, the median of its target over every project; else
`DEFAULT_S`). Running the longest remaining chain first is the classic list-scheduling rule
(HLFET); with no history every task weighs the same and it orders by depth of dependents.

Placement prefers the agent that last built the project (a warm checkout and node_modules),
but only while that agent has a free slot: a task never waits for it when another slot is free.
Pure functions: the graph and the history in, numbers and names out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..probe.task_graph import TaskGraph

DEFAULT_S = 1.0


def expected_seconds(task: str, history: Mapping[str, Any]) -> float:
    durations = history.get("durations", {})
    if task in durations:
        return float(durations[task])
    target = task.split(":")[1] if ":" in task else ""
    return float(history.get("target_medians", {}).get(target, DEFAULT_S))


def priorities(graph: TaskGraph, tasks: set[str], history: Mapping[str, Any]) -> dict[str, float]:
    """task -> expected seconds from its start to the end of the longest chain it heads."""
    dependents: dict[str, list[str]] = {task: [] for task in tasks}
    for task in tasks:
        for dep in graph.dependencies[task]:
            if dep in tasks:
                dependents[dep].append(task)
    level: dict[str, float] = {}
    for depth in reversed(graph.levels()):  # dependents before what they depend on; no recursion
        for task in depth:
            if task in tasks:
                level[task] = expected_seconds(task, history) + max((level[d] for d in dependents[task]), default=0.0)
    return level


def preferred_worker(task: str, history: Mapping[str, Any], workers: Mapping[str, tuple[str, int]],
                     busy: Mapping[str, int]) -> str | None:
    """The address of the agent that last built this task's project, if it has a free slot now.
    `workers`: address -> (agent name, slots); `busy`: address -> tasks it holds."""
    agent = history.get("recent_agents", {}).get(task.split(":", 1)[0])
    for address, (name, slots) in workers.items():
        if name == agent and busy.get(address, 0) < slots:
            return address
    return None
