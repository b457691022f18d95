"""What the orchestrator sends an agent and what comes back. Both sides import these by name,
so they must stay plain data (no secrets: each agent uses its own cache token)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskRequest:
    task_id: str            # "project:target[:configuration]"
    repo_url: str           # where the agent fetches `commit` from
    commit: str
    workspace_dir: str      # the Nx workspace, relative to the repository root ("" = the root)
    nx_args: tuple[str, ...] = ()  # overrides given to the whole build (e.g. --configuration=production)


@dataclass(frozen=True)
class TaskResult:
    task_id: str
    agent: str
    exit_code: int
    seconds: float
    cache: str | None       # "remote cache" / "local cache" when Nx restored it, else None
    log_tail: str
    phase: str = "run"      # which step decided exit_code: checkout, install or run

    @property
    def ok(self) -> bool:
        return self.exit_code == 0
