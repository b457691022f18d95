"""One run's timeline as inline SVG: a row per agent slot, a bar per task that ran on the farm,
coloured by what happened, the critical path outlined. Pure: a StoredRun in, markup out.

Reports name the agent, not the slot: tasks on one agent are packed into as many rows as were
busy at once (the first row free at a task's start), which is the slots they used.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

from .report import RunReport, TaskRecord

WIDTH, ROW, LABEL, AXIS = 1000, 22, 150, 24
KINDS = {"executed": "#3b6fd8", "remote cache": "#2e9e5b", "local cache": "#2e9e5b", "failed": "#d33c3c",
         "retried": "#e08a1e", "lost": "#999999"}


@dataclass(frozen=True)
class Bar:
    task: TaskRecord
    row: int
    kind: str  # a key of KINDS
    critical: bool


def kind_of(task: TaskRecord) -> str:
    if task.outcome == "failed":
        return "failed"
    if task.outcome == "lost":
        return "lost"
    if task.retries:
        return "retried"
    return task.cache or "executed"


def rows_and_bars(report: RunReport) -> tuple[list[str], list[Bar]]:
    """Row labels (agent · slot n) and the bars, packed per agent by start time."""
    on_farm = sorted((t for t in report.tasks if t.agent and t.finished > 0), key=lambda t: (t.agent, t.started))
    critical = critical_path(report)
    labels: list[str] = []
    bars: list[Bar] = []
    lanes: dict[str, list[tuple[int, float]]] = {}  # agent -> (row, end of its last bar)
    for task in on_farm:
        agent_lanes = lanes.setdefault(task.agent, [])
        free = next((i for i, (_, end) in enumerate(agent_lanes) if end <= task.started + 1e-6), None)
        if free is None:
            labels.append(f"{task.agent} · slot {len(agent_lanes) + 1}")
            agent_lanes.append((len(labels) - 1, task.finished))
            free = len(agent_lanes) - 1
        row = agent_lanes[free][0]
        agent_lanes[free] = (row, task.finished)
        bars.append(Bar(task, row, kind_of(task), task.task_id in critical))
    return labels, bars


def critical_path(report: RunReport) -> set[str]:
    """The chain that decided when the farm's part ended: from the task that finished last, back
    through the dependency that finished last, to a task that waited for nothing."""
    by_id = {t.task_id: t for t in report.tasks if t.agent and t.finished > 0}
    if not by_id:
        return set()
    current = max(by_id.values(), key=lambda t: t.finished)
    chain = {current.task_id}
    while True:
        needs = [by_id[n] for n in current.needs if n in by_id]
        if not needs:
            return chain
        current = max(needs, key=lambda t: t.finished)
        chain.add(current.task_id)


def svg(report: RunReport) -> str:
    labels, bars = rows_and_bars(report)
    start = report.started
    span = max(report.ended - start, 1e-3)
    scale = (WIDTH - LABEL - 10) / span
    height = AXIS + ROW * max(len(labels), 1) + 6
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" height="{height}" '
           f'viewBox="0 0 {WIDTH} {height}" role="img" aria-label="timeline of run {escape(report.run_id)}">']
    for second in _ticks(span):
        x = LABEL + second * scale
        out.append(f'<line x1="{x:.1f}" y1="{AXIS - 6}" x2="{x:.1f}" y2="{height}" stroke="#e4e4e4"/>'
                   f'<text x="{x:.1f}" y="{AXIS - 9}" font-size="10" text-anchor="middle">{second:g}s</text>')
    for row, label in enumerate(labels):
        y = AXIS + row * ROW
        out.append(f'<text x="4" y="{y + 15}" font-size="11" class="row-label">{escape(label)}</text>')
    for bar in bars:
        task = bar.task
        x = LABEL + (task.started - start) * scale
        width = max((task.finished - task.started) * scale, 2.0)
        y = AXIS + bar.row * ROW + 2
        seconds = task.finished - task.started
        title = f"{task.task_id} on {task.agent}: {bar.kind}, {seconds:.1f}s" + (" (critical path)" if bar.critical else "")
        stroke = ' stroke="#111" stroke-width="2.5"' if bar.critical else ""
        out.append(f'<rect class="bar {bar.kind.replace(" ", "-")}{" critical" if bar.critical else ""}" '
                   f'data-task="{escape(task.task_id)}" data-row="{bar.row}" x="{x:.1f}" y="{y}" width="{width:.1f}" '
                   f'height="{ROW - 5}" fill="{KINDS[bar.kind]}"{stroke}><title>{escape(title)}</title></rect>')
        if width > 8 * len(task.task_id) * 0.75:  # the name, where it fits inside the bar
            out.append(f'<text x="{x + 4:.1f}" y="{y + 12}" font-size="10" fill="#fff" pointer-events="none">'
                       f'{escape(task.task_id)}</text>')
    out.append("</svg>")
    return "".join(out)


def _ticks(span: float) -> list[float]:
    step = next(s for s in (0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600, 1e9) if span / s <= 10)
    return [i * step for i in range(int(span // step) + 1)]
