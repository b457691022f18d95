"""The run pages, server-rendered HTML (no scripts): the runs list and one run with its timeline.
Pure: stored runs in, a page out. Everything a report carries is escaped (reports come from
orchestrators, and a command line or a task id is theirs to choose)."""

from __future__ import annotations

import time
from html import escape

from .store import StoredRun
from .timeline import KINDS, svg

STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{padding:3px 10px;border-bottom:1px solid #ddd;text-align:left}th{background:#f4f4f4}
.legend span{display:inline-block;margin-right:14px}.legend i{display:inline-block;width:12px;height:12px;
margin-right:4px;vertical-align:-1px}.num{text-align:right}code{font-size:13px}"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)} · nx-farm</title>'
            f'<style>{STYLE}</style></head><body><p><a href="/">runs</a></p><h1>{escape(title)}</h1>{body}</body></html>')


def _when(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch)) + " UTC"


def runs_page(runs: list[StoredRun]) -> str:
    rows = []
    for run in runs:
        report = run.report
        on_farm = sum(1 for t in report.tasks if t.agent)
        failed = sum(1 for t in report.tasks if t.outcome == "failed")
        rows.append(
            f'<tr class="run"><td><a href="/runs/{escape(report.run_id)}">{_when(report.started)}</a></td>'
            f"<td>{escape(run.orchestrator)}</td><td>{escape(report.mode)}</td><td><code>{escape(report.command)}</code>"
            f"</td><td><code>{escape(report.commit[:10])}</code></td><td class=num>{len(report.tasks)}</td>"
            f"<td class=num>{on_farm}</td><td class=num>{failed}</td>"
            f"<td class=num>{report.ended - report.started:.1f}s</td><td class=num>{report.exit_code}</td></tr>")
    header = ("<tr><th>started</th><th>by</th><th>mode</th><th>command</th><th>commit</th><th>tasks</th>"
              "<th>on agents</th><th>failed</th><th>took</th><th>exit</th></tr>")
    body = f"<table>{header}{''.join(rows)}</table>" if rows else "<p>No runs reported yet.</p>"
    return _page("Runs", body)


def run_page(run: StoredRun) -> str:
    report = run.report
    legend = "".join(f'<span><i style="background:{color}"></i>{escape(kind)}</span>'
                     for kind, color in KINDS.items() if kind != "local cache")
    facts = (f"<p><code>nx {escape(report.command)}</code><br>{escape(report.mode)}: {escape(report.reason)}<br>"
             f"by {escape(run.orchestrator)}, "
             f"commit <code>{escape(report.commit or '-')}</code>, {_when(report.started)}, "
             f"took {report.ended - report.started:.1f}s, exit {report.exit_code}"
             + (f", {report.dropped_before} earlier report(s) lost" if report.dropped_before else "") + "</p>")
    rows = "".join(
        f'<tr class="task"><td><code>{escape(t.task_id)}</code></td><td>{escape(t.agent or "here")}</td>'
        f"<td>{escape(t.outcome)}</td><td>{escape(t.cache or '-')}</td><td>{escape(t.final or '-')}</td>"
        f"<td class=num>{(t.finished - t.started):.1f}s</td></tr>" if t.finished and t.started else
        f'<tr class="task"><td><code>{escape(t.task_id)}</code></td><td>{escape(t.agent or "here")}</td>'
        f"<td>{escape(t.outcome)}</td><td>{escape(t.cache or '-')}</td><td>{escape(t.final or '-')}</td><td>-</td></tr>"
        for t in report.tasks)
    table = ("<table><tr><th>task</th><th>ran on</th><th>outcome</th><th>on the agent</th><th>final pass</th>"
             f"<th>took</th></tr>{rows}</table>")
    timeline = (f'<p class="legend">{legend}<span>outlined: critical path</span></p>{svg(report)}'
                if any(t.agent and t.finished for t in report.tasks) else "<p>No task ran on the farm.</p>")
    return _page(f"Run {report.run_id[:8]}", facts + timeline + "<h2>Tasks</h2>" + table)
