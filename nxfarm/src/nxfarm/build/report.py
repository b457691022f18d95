"""What `nxfarm build` prints: the plan before, and one row per task after. Pure text."""

from __future__ import annotations

import re
from collections.abc import Mapping

from ..probe.task_graph import TaskGraph
from .dispatch import Outcome


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(line, widths)).rstrip()
             for line in [headers, *rows]]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def plan_text(graph: TaskGraph, eligible: set[str], agents: Mapping[str, int], mode_line: str,
              distributed: bool) -> str:
    rows = []
    for step, level in enumerate(graph.levels(), start=1):
        for task in level:
            where = "an agent" if distributed and task in eligible else "here"
            why = "" if not distributed or task in eligible else (
                " (not cacheable)" if not graph.tasks[task].cacheable else
                " (continuous)" if graph.tasks[task].continuous else " (depends on a local-only task)")
            rows.append([str(step), task, where + why])
    lines = [mode_line, table(["STEP", "TASK", "RUNS ON"], rows)]
    if distributed:
        lines.append("eligible agents: " + ", ".join(f"{name} ({slots} slot{'s' * (slots != 1)})"
                                                     for name, slots in sorted(agents.items())))
    return "\n".join(lines)


def final_table(graph: TaskGraph, outcomes: Mapping[str, Outcome], final: Mapping[str, str]) -> str:
    rows = []
    for level in graph.levels():
        for task in level:
            outcome = outcomes.get(task)
            result = outcome.result if outcome else None
            ran_on = result.agent if result else "here"
            seconds = f"{result.seconds:.1f}s" if result else "-"
            if result is None:
                status = outcome.status + (f": {outcome.note}" if outcome.note else "") if outcome else "-"
            elif result.ok:
                status = "ok" + (f" ({result.cache})" if result.cache else "")
                if outcome is not None and outcome.flaky:
                    status += " FLAKY: failed first on " + ", ".join(f.agent for f in outcome.failed_before)
            else:
                status = f"failed in {result.phase} (exit {result.exit_code})"
            rows.append([task, ran_on, seconds, status, final.get(task, "not run")])
    return table(["TASK", "RAN ON", "TIME", "RESULT", "FINAL PASS"], rows)


def summary(final: Mapping[str, str], outcomes: Mapping[str, Outcome] | None = None) -> str:
    restored = sum(1 for how in final.values() if how in ("remote cache", "local cache", "outputs already here"))
    executed = sum(1 for how in final.values() if how == "executed here")
    flaky = sorted(task for task, outcome in (outcomes or {}).items() if outcome.flaky)
    return (f"final pass: {restored}/{len(final)} task(s) restored from cache, {executed} executed here"
            + (f"; flaky (failed, then passed on another agent): {', '.join(flaky)}" if flaky else ""))


def parse_final_table(output: str) -> list[dict[str, str]]:
    """The rows of the last final table in `output` (for the demo and scripts), by header."""
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("TASK") and "FINAL PASS" in line]
    if not starts:
        return []
    header = lines[starts[-1]]
    spans = [(m.start(), m.group()) for m in re.finditer(r"\S+(?: \S+)*", header)]
    rows = []
    for line in lines[starts[-1] + 2:]:
        if not line.strip() or line.startswith("nxfarm:"):
            break
        cells = {}
        for index, (start, name) in enumerate(spans):
            end = spans[index + 1][0] if index + 1 < len(spans) else None
            cells[name] = line[start:end].strip()
        rows.append(cells)
    return rows
