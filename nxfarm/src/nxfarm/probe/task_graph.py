"""Nx's task graph (`nx run-many ... --graph=FILE`) as data. Pure: no subprocess here.

Accepts both edge formats measured in research/dte.md: Nx 20-23 list dependencies as task
ids (`["lib-a:build"]`), Nx 24 as objects (`[{"id": "lib-a:build"}]`). Accepts the whole
`--graph` document (`graph`, `tasks`, `taskPlans`) or just its `tasks` section.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class TaskGraphError(ValueError):
    """The JSON is not a task graph Nx would produce (the message names the task or key)."""


@dataclass(frozen=True)
class NxTask:
    id: str
    project: str
    target: str
    configuration: str | None
    project_root: str
    outputs: tuple[str, ...]
    cacheable: bool
    continuous: bool


@dataclass(frozen=True)
class TaskGraph:
    tasks: Mapping[str, NxTask]
    dependencies: Mapping[str, tuple[str, ...]]

    def levels(self) -> list[list[str]]:
        """Task ids in dependency order, grouped: every task comes after all it depends on."""
        waiting = {task: set(deps) for task, deps in self.dependencies.items()}
        levels: list[list[str]] = []
        while waiting:
            ready = sorted(task for task, deps in waiting.items() if not deps)
            if not ready:
                raise TaskGraphError(f"dependency cycle among {', '.join(sorted(waiting))}")
            levels.append(ready)
            for task in ready:
                del waiting[task]
            for deps in waiting.values():
                deps.difference_update(ready)
        return levels

    def distributable(self) -> set[str]:
        """Tasks an agent may run: cacheable (their outputs come back through the remote cache)
        and not continuous (servers and watchers stay with the developer)."""
        return {task.id for task in self.tasks.values() if task.cacheable and not task.continuous}


def _edge_id(edge: Any, task_id: str) -> str:
    if isinstance(edge, str):
        return edge
    if isinstance(edge, Mapping) and isinstance(edge.get("id"), str):
        return edge["id"]
    raise TaskGraphError(f"dependencies[{task_id!r}]: edge {edge!r} is neither a task id nor {{'id': ...}}")


def _task(task_id: str, raw: Any) -> NxTask:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("target"), Mapping):
        raise TaskGraphError(f"tasks[{task_id!r}]: expected an object with a 'target'")
    target = raw["target"]
    try:
        return NxTask(
            id=task_id,
            project=str(target["project"]),
            target=str(target["target"]),
            configuration=target.get("configuration"),
            project_root=str(raw.get("projectRoot", "")),
            outputs=tuple(raw.get("outputs") or ()),
            cacheable=bool(raw.get("cache", False)),
            continuous=bool(raw.get("continuous", False)),  # absent before Nx 21
        )
    except KeyError as exc:
        raise TaskGraphError(f"tasks[{task_id!r}].target: missing {exc.args[0]!r}") from None


def parse_task_graph(document: Mapping[str, Any]) -> TaskGraph:
    section = document.get("tasks") if isinstance(document, Mapping) else None
    if isinstance(section, Mapping) and "dependencies" in section:
        document = section  # the whole --graph output; keep its tasks section
    if not isinstance(document, Mapping) or not isinstance(document.get("tasks"), Mapping) \
            or not isinstance(document.get("dependencies"), Mapping):
        raise TaskGraphError("not an Nx task graph: expected 'tasks' and 'dependencies' objects")
    tasks = {task_id: _task(task_id, raw) for task_id, raw in document["tasks"].items()}
    dependencies: dict[str, tuple[str, ...]] = {}
    for task_id in tasks:
        edges = document["dependencies"].get(task_id, [])
        ids = tuple(_edge_id(edge, task_id) for edge in edges)
        unknown = [dep for dep in ids if dep not in tasks]
        if unknown:
            raise TaskGraphError(f"dependencies[{task_id!r}]: unknown task(s) {', '.join(unknown)}")
        dependencies[task_id] = ids
    stray = set(document["dependencies"]) - set(tasks)
    if stray:
        raise TaskGraphError(f"dependencies for unknown task(s) {', '.join(sorted(stray))}")
    return TaskGraph(tasks, dependencies)
