"""One build as the orchestrator reports it: JSON text, checked field by field on arrival.

The report travels to the scheduler as a plain string (never pickled), like task requests
(farm/protocol.py). Who sent it is not in it: the scheduler records the member named by the
sender's certificate. Sizes are capped so a report cannot grow the database without bound.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from ..farm.protocol import ProtocolError, decode_object

MAX_TASKS = 20_000
MAX_TEXT = 2_000  # characters of any one string (a command line, a reason)
MODES = ("distributed", "local", "fallback")
OUTCOMES = ("ok", "failed", "lost", "skipped", "not run")
CACHE = ("remote cache", "local cache", "executed", "")


@dataclass(frozen=True)
class TaskRecord:
    task_id: str            # project:target[:configuration]
    agent: str = ""         # "" = it ran here (the final pass), not on an agent
    queued: float = 0.0     # epoch seconds: handed to the scheduler (0 when it never was)
    started: float = 0.0    # began on its agent (0 when not known)
    finished: float = 0.0   # its result came back (0 when it never did)
    outcome: str = "not run"
    cache: str = ""         # how the agent got its outputs: restored ("remote cache") or "executed"
    final: str = ""         # the final pass: "remote cache", "executed here", ...
    retries: int = 0
    needs: tuple[str, ...] = ()  # the tasks it depends on (for the critical path)

    @property
    def project(self) -> str:
        return self.task_id.split(":", 1)[0]

    @property
    def target(self) -> str:
        return self.task_id.split(":")[1] if ":" in self.task_id else ""


@dataclass(frozen=True)
class RunReport:
    run_id: str             # 32 hex characters, made by the orchestrator (a resend stores nothing twice)
    command: str            # the nx arguments, as the build ran them
    commit: str             # "" when the workspace is not a git repository
    mode: str               # distributed, local, fallback
    reason: str             # why this mode (the fallback's reason)
    started: float
    ended: float
    exit_code: int
    tasks: tuple[TaskRecord, ...] = field(default_factory=tuple)
    dropped_before: int = 0  # reports this orchestrator had to drop since its last delivered one

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> RunReport:
        data = decode_object(cls, text if isinstance(text, str) else "")
        values = {name: _checked(cls, name, data.get(name), kind) for name, kind in _RUN_FIELDS.items()}
        if len(values["run_id"]) != 32 or any(ch not in "0123456789abcdef" for ch in values["run_id"]):
            raise ProtocolError("RunReport.run_id: 32 lowercase hex characters expected")
        if values["mode"] not in MODES:
            raise ProtocolError(f"RunReport.mode: one of {', '.join(MODES)} expected")
        tasks = data.get("tasks", [])
        if not isinstance(tasks, list) or len(tasks) > MAX_TASKS:
            raise ProtocolError(f"RunReport.tasks: a list of at most {MAX_TASKS} expected")
        return cls(**values, tasks=tuple(_task(item) for item in tasks))


_RUN_FIELDS: dict[str, type] = {"run_id": str, "command": str, "commit": str, "mode": str, "reason": str,
                                "started": float, "ended": float, "exit_code": int, "dropped_before": int}
_TASK_FIELDS: dict[str, type] = {"task_id": str, "agent": str, "queued": float, "started": float, "finished": float,
                                 "outcome": str, "cache": str, "final": str, "retries": int}


def _checked(cls: type, name: str, value: Any, kind: type) -> Any:
    if value is None:
        default = next(f.default for f in fields(cls) if f.name == name)
        if default is MISSING:
            raise ProtocolError(f"{cls.__name__}.{name}: missing")
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"{cls.__name__}.{name}: {kind.__name__} expected")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise ProtocolError(f"{cls.__name__}.{name}: longer than {MAX_TEXT} characters")
    if isinstance(value, float) and not (math.isfinite(value) and value >= 0):
        raise ProtocolError(f"{cls.__name__}.{name}: a finite time expected")
    if isinstance(value, int) and not (-(2**31) <= value < 2**31):
        raise ProtocolError(f"{cls.__name__}.{name}: out of range")
    return value


def _task(item: Any) -> TaskRecord:
    if not isinstance(item, dict):
        raise ProtocolError("TaskRecord: not a JSON object")
    unknown = sorted(set(item) - set(_TASK_FIELDS) - {"needs"})
    if unknown:
        raise ProtocolError(f"TaskRecord: unknown field(s) {', '.join(unknown)}")
    values = {name: _checked(TaskRecord, name, item.get(name), kind) for name, kind in _TASK_FIELDS.items()}
    needs = item.get("needs", [])
    if not isinstance(needs, list) or len(needs) > 1000 or not all(isinstance(n, str) and len(n) <= MAX_TEXT
                                                                   for n in needs):
        raise ProtocolError("TaskRecord.needs: a list of at most 1000 task ids expected")
    values["needs"] = tuple(needs)
    if values["outcome"] not in OUTCOMES:
        raise ProtocolError(f"TaskRecord.outcome: one of {', '.join(OUTCOMES)} expected")
    if values["cache"] not in CACHE:
        raise ProtocolError(f"TaskRecord.cache: one of {', '.join(repr(c) for c in CACHE)} expected")
    return TaskRecord(**values)
