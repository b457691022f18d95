"""The demo's local farm (nxfarm.demo.farm) for tests, plus what tests read from its output."""

from __future__ import annotations

from pathlib import Path

from nxfarm.build.report import parse_final_table
from nxfarm.demo.farm import NXFARM, LocalFarm as _LocalFarm, Process, clean_env

__all__ = ["NXFARM", "LocalFarm", "Process", "clean_env", "final_pass_rows"]


class LocalFarm(_LocalFarm):
    def entry_files(self) -> list[Path]:
        return [p for p in (self.storage / "entries").rglob("*") if p.is_file()]


def final_pass_rows(output: str) -> dict[str, tuple[str, str]]:
    """From the final table: task -> (ran on, final pass)."""
    return {row["TASK"]: (row["RAN ON"], row["FINAL PASS"]) for row in parse_final_table(output)}
