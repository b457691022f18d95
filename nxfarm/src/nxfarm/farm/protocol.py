"""What the orchestrator sends an agent and what comes back, as JSON text.

Both travel through Dask as plain strings, so neither side unpickles the other's objects
(farm/unpickle.py); a malformed message is a ProtocolError naming the field. No secrets: each
agent uses its own cache token.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from typing import Any

_HEX_COMMIT = re.compile(r"[0-9a-f]{40}([0-9a-f]{24})?")
_NAMESPACE = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")  # as the cache server's (cache_server/namespaces.py)


class ProtocolError(ValueError):
    """A message that is not what the other side sends."""


def decode_object(cls: type, text: str) -> dict[str, Any]:
    """`text` as a JSON object with no field `cls` lacks; ProtocolError naming what is wrong."""
    try:
        data = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"{cls.__name__}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"{cls.__name__}: not a JSON object")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ProtocolError(f"{cls.__name__}: unknown field(s) {', '.join(unknown)}")
    return data


@dataclass(frozen=True)
class TaskRequest:
    task_id: str            # "project:target[:configuration]"
    repo_url: str           # where the agent fetches `commit` from
    commit: str             # full hex object id
    workspace_dir: str      # the Nx workspace, relative to the repository root ("" = the root)
    nx_args: tuple[str, ...] = ()  # overrides given to the whole build (e.g. --configuration=production)
    namespace: str = ""     # the orchestrator's cache namespace; "" = trusted (the agent decides)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TaskRequest:
        data = decode_object(cls, text)
        for name in ("task_id", "repo_url", "commit", "workspace_dir"):
            if not isinstance(data.get(name), str):
                raise ProtocolError(f"TaskRequest.{name}: expected a string")
        args = data.get("nx_args", [])
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ProtocolError("TaskRequest.nx_args: expected a list of strings")
        if not _HEX_COMMIT.fullmatch(data["commit"]):
            raise ProtocolError(f"TaskRequest.commit: {data['commit'][:80]!r} is not a full hex commit id")
        parts = data["workspace_dir"].split("/")
        if data["workspace_dir"].startswith("/") or ".." in parts:
            raise ProtocolError(f"TaskRequest.workspace_dir: {data['workspace_dir'][:80]!r} leaves the checkout")
        namespace = data.get("namespace", "")
        if not isinstance(namespace, str) or (namespace and not _NAMESPACE.fullmatch(namespace)):
            raise ProtocolError(f"TaskRequest.namespace: {str(namespace)[:40]!r} is not a cache namespace")
        return cls(data["task_id"], data["repo_url"], data["commit"], data["workspace_dir"], tuple(args), namespace)


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    agent: str
    exit_code: int
    seconds: float
    cache: str | None       # "remote cache" / "local cache" when Nx restored it, else None
    log_tail: str
    phase: str = "run"      # which step decided exit_code: checkout, install or run
    tier: str = ""          # trusted or branch, as the agent decided from the commit

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TaskResult:
        data = decode_object(cls, text)
        expected: dict[str, type | tuple[type, ...]] = {"task_id": str, "agent": str, "exit_code": int,
                                                        "seconds": (int, float), "log_tail": str, "phase": str,
                                                        "tier": str}
        for name, kind in expected.items():
            if name in data and not isinstance(data[name], kind):
                raise ProtocolError(f"TaskResult.{name}: wrong type")
        if data.get("cache") is not None and not isinstance(data["cache"], str):
            raise ProtocolError("TaskResult.cache: wrong type")
        missing = sorted({"task_id", "agent", "exit_code", "seconds", "cache", "log_tail"} - set(data))
        if missing:
            raise ProtocolError(f"TaskResult: missing {', '.join(missing)}")
        return cls(**data)
