"""`nxfarm build`: the orchestrator's whole flow, from probes to Nx's exit code.

  1. ask Nx for the task graph of exactly the command the developer would run;
  2. probe the cache (briefly: Nx has no timeouts), the git tree and the scheduler, and pick
     distributed / local / local without the remote cache, with a one-line reason;
  3. print the plan; stop there on --dry-run; ask unless --yes or DEPLOY_CONFIRM=yes;
  4. distribute the eligible tasks, then run the same Nx command here: distributed tasks
     restore from the remote cache, anything missing runs here, and Nx's exit code is ours.

Exit codes: Nx's own; 2 for bad usage, a refused tree or no confirmation; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Any

from .. import client as farm_settings
from ..actions.fallback import Mode, choose_mode
from ..farm import security as tls
from ..farm.connect import SchedulerUnreachable, open_client
from ..farm.protocol import TaskRequest
from ..probe.cache import CacheProbe, probe_cache
from ..probe.git import read_git_state
from ..probe.task_graph import TaskGraphError, parse_task_graph
from ..runs.outbox import Outbox
from ..runs.report import MAX_TEXT, RunReport
from . import reaper, report, runlog
from .dispatch import Outcome, dispatch, eligible_tasks
from .nx import CACHE_TOKEN_ENV, CACHE_URL_ENV, NxError, NxInvocation, base_env, final_pass, find_workspace, task_graph_json

EPILOG = """examples:
  nxfarm build -t build test lint                     every project, on the farm
  nxfarm build -t build --affected --base=origin/main  only what changed
  nxfarm build -t build --projects app,lib-a --dry-run the plan, nothing run
  nxfarm build -t build --local --yes                 here, with the remote cache

environment: NXFARM_SCHEDULER, NXFARM_TLS_CA/CERT/KEY (the orchestrator's certificate),
NX_SELF_HOSTED_REMOTE_CACHE_SERVER and NX_SELF_HOSTED_REMOTE_CACHE_ACCESS_TOKEN, DRY_RUN=1,
DEPLOY_CONFIRM=yes. Exit code: Nx's; 2 = usage, refused or not confirmed; 130 = interrupted."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-t", "--targets", nargs="+", required=True, metavar="TARGET", help="Nx targets to run")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--affected", action="store_true", help="only affected projects (nx affected)")
    which.add_argument("-p", "--projects", default="", help="comma-separated projects (default: all)")
    parser.add_argument("--base", help="with --affected: base of the change")
    parser.add_argument("--head", help="with --affected: head of the change")
    parser.add_argument("--configuration", "-c", help="Nx configuration passed to every task")
    parser.add_argument("--workspace", type=Path, default=None, help="the Nx workspace (default: nx.json at or above .)")
    parser.add_argument("--local", action="store_true", help="build on this machine only (with the remote cache)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and run nothing (also DRY_RUN=1)")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask (also DEPLOY_CONFIRM=yes)")
    parser.add_argument("--scheduler", default=os.environ.get("NXFARM_SCHEDULER"),
                        help="tls://host:port of the farm's scheduler (default: $NXFARM_SCHEDULER)")
    parser.add_argument("--remote", default="origin", help="git remote the agents fetch from (default: origin)")
    parser.add_argument("--lost-grace", type=float, default=15.0,
                        help="seconds without any agent before the rest runs here (default 15)")
    parser.add_argument("--probe-timeout", type=float, default=2.0, help="seconds for each farm probe (default 2)")
    parser.add_argument("--retries", type=int, default=1, choices=range(0, 4), metavar="N",
                        help="try a task that failed on an agent again on another one, up to N times; one that "
                             "then passes is reported flaky (default 1; 0: no retries)")
    parser.add_argument("--order", choices=("history", "name"), default="history",
                        help="history: ready tasks go longest expected chain first (durations from the farm's run "
                             "store), each to the agent that last built its project while it has a free slot; "
                             "name: in name order, anywhere (default history)")
    tls.add_arguments(parser)


def _say(line: str) -> None:
    print(f"nxfarm: {line}", flush=True)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "y")


class FarmConfigError(ValueError):
    """The farm settings are wrong (not the farm down): the build stops with exit 2 and the fix."""


def scheduler_address(value: str) -> str:
    """The scheduler address as Dask needs it, or FarmConfigError naming the fix."""
    if "://" not in value:
        raise FarmConfigError(f"scheduler address {value!r} has no scheme: the farm's scheduler speaks TLS only, "
                              f"write tls://{value} (NXFARM_SCHEDULER / --scheduler)")
    if not value.startswith("tls://"):
        raise FarmConfigError(f"scheduler address {value!r}: the farm's scheduler speaks TLS only, write "
                              f"tls://{value.split('://', 1)[1]} (NXFARM_SCHEDULER / --scheduler)")
    return value


def _tls_files(args: argparse.Namespace, env: dict[str, str]):  # noqa: ANN202 - TlsFiles
    """The orchestrator's certificate; a missing or unreadable file is a configuration error,
    not an outage, so it stops the build instead of falling back."""
    try:
        return tls.resolve(args.tls_ca, args.tls_cert, args.tls_key, environ=env)
    except tls.TlsConfigError as exc:
        raise FarmConfigError(f"{exc} (the farm's scheduler is configured: {args.scheduler})") from None


def _connect(args: argparse.Namespace, files):  # noqa: ANN001, ANN202 - (Client | None, agents, error)
    try:
        client = open_client(args.scheduler, files, args.probe_timeout * 2)
    except SchedulerUnreachable as exc:
        return None, {}, f"{args.scheduler}: {exc}"
    workers = client.scheduler_info(n_workers=-1)["workers"]
    agents = {str(info.get("name", address)): int(info.get("nthreads", 1)) for address, info in workers.items()}
    return client, agents, None


def cache_namespace_of(cache_url: str) -> str:
    """The namespace this orchestrator's cache URL names (`.../ns/<name>`), or "" for trusted:
    agents write an untrusted commit's outputs there, so this build's final pass finds them."""
    path = urllib.parse.urlsplit(cache_url).path.rstrip("/").split("/")
    return path[-1] if len(path) >= 2 and path[-2] == "ns" else ""


def close_client(client: Any) -> None:
    """Say goodbye to the scheduler, briefly: it may be gone. A client whose scheduler died tries
    to reconnect while closing and can raise from inside distributed or tornado (a ValueError
    from a TLS stream, a timeout); the build goes on to its local pass all the same."""
    try:
        client.close(timeout=2)
    except Exception as exc:  # noqa: BLE001 - whatever distributed raises, the local pass decides
        _say(f"note: closing the farm connection: {type(exc).__name__}")


def _confirm(args: argparse.Namespace, question: str) -> bool:
    if args.yes or os.environ.get("DEPLOY_CONFIRM", "").lower() == "yes":
        return True
    if not sys.stdin.isatty():
        _say("not confirmed: pass --yes (or set DEPLOY_CONFIRM=yes) to run without a terminal")
        return False
    return input(f"{question} [y/N] ").strip().lower() in ("y", "yes")


def _repo(workspace: Path, remote: str, from_workspace: bool) -> tuple[str, str]:
    """(URL the agents fetch from, workspace path inside the repository). Agents of a local farm
    (`from_workspace`) fetch from the repository itself."""
    top = subprocess.run(["git", "-C", str(workspace), "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    if top.returncode != 0:
        raise FarmConfigError(f"{workspace} is not in a git repository, and agents build commits: `git init` and "
                              f"commit it, or build here with --local")
    root = top.stdout.strip()
    relative = os.path.relpath(workspace.resolve(), Path(root).resolve())
    relative = "" if relative == "." else relative
    if from_workspace:
        return root, relative
    url = subprocess.run(["git", "-C", str(workspace), "remote", "get-url", remote], capture_output=True, text=True)
    if url.returncode != 0:
        raise FarmConfigError(f"git remote '{remote}' is not set in {root}: agents need a remote to fetch from "
                              f"(--remote NAME), or build here with --local")
    return url.stdout.strip(), relative


def run(args: argparse.Namespace) -> int:
    reaper.adopt_orphans()
    try:
        return _run(args)
    except KeyboardInterrupt:
        stopped = reaper.stop_descendants()
        _say(f"interrupted; stopped {stopped} process(es) it had started" if stopped else "interrupted")
        return 130


def _run(args: argparse.Namespace) -> int:
    dry_run = args.dry_run or _truthy(os.environ.get("DRY_RUN"))
    extra = (f"--configuration={args.configuration}",) if args.configuration else ()
    if (args.base or args.head) and not args.affected:
        print("nxfarm build: --base/--head need --affected", file=sys.stderr)
        return 2
    invocation = NxInvocation(tuple(args.targets), tuple(p for p in args.projects.split(",") if p), args.affected,
                              args.base, args.head, extra)
    farm_env, source = farm_settings.resolve()
    env = base_env(farm_env)
    args.scheduler = args.scheduler or farm_env.get(farm_settings.SCHEDULER_ENV)
    try:
        workspace = find_workspace((args.workspace or Path.cwd()).resolve())
        graph = parse_task_graph(task_graph_json(workspace, invocation, env))
    except (NxError, TaskGraphError, subprocess.TimeoutExpired) as exc:
        print(f"nxfarm build: {exc}", file=sys.stderr)
        return 2
    if source.startswith("the local farm"):
        _say(f"using {source}")

    cache_url = env.get(CACHE_URL_ENV)
    cache = (probe_cache(cache_url, env.get(CACHE_TOKEN_ENV), timeout=args.probe_timeout) if cache_url
             else CacheProbe(False, f"{CACHE_URL_ENV} is not set"))
    dask_client, agents, scheduler_error = (None, {}, None)
    repo_url, workspace_dir, commit = "", "", ""
    started = time.time()
    if args.scheduler and cache.usable and not args.local:
        from_workspace = farm_env.get(farm_settings.FETCH_FROM_ENV) == "workspace"
        try:
            args.scheduler = scheduler_address(args.scheduler)
            files = _tls_files(args, farm_env)
            repo_url, workspace_dir = _repo(workspace, args.remote, from_workspace)
            state = read_git_state(workspace, args.remote)
        except (RuntimeError, FarmConfigError) as exc:
            print(f"nxfarm build: {exc}", file=sys.stderr)
            return 2
        refusal = state.refusal(args.remote, need_remote=not from_workspace)
        if refusal:
            print(f"nxfarm build: refusing to distribute: {refusal}", file=sys.stderr)
            return 2
        commit = state.commit
        dask_client, agents, scheduler_error = _connect(args, files)
    plan = choose_mode(cache=cache, scheduler_error=scheduler_error, workers=len(agents), local_requested=args.local,
                       scheduler_configured=bool(args.scheduler))
    try:
        eligible = eligible_tasks(graph) if plan.mode is Mode.DISTRIBUTED else set()
        _say(report.plan_text(graph, eligible, agents, plan.reason, plan.mode is Mode.DISTRIBUTED)
             .replace("\n", "\n       "))
        if dry_run:
            _say("dry run: nothing was run")
            return 0
        where = f"on {len(agents)} agent(s)" if plan.mode is Mode.DISTRIBUTED else "here"
        if not _confirm(args, f"Run {len(graph.tasks)} task(s) {where}?"):
            return 2

        outcomes: dict[str, Outcome] = {}
        dispatch_fallback = None
        if plan.mode is Mode.DISTRIBUTED and eligible:
            namespace = cache_namespace_of(env.get(CACHE_URL_ENV, ""))

            def request_for(task: str) -> TaskRequest:
                return TaskRequest(task, repo_url, commit, workspace_dir, extra, namespace)

            history = runlog.history(dask_client, sorted(eligible)) if args.order == "history" else None
            dispatched = dispatch(dask_client, graph, eligible, request_for, _say, lost_grace=args.lost_grace,
                                  retries=args.retries, history=history)
            outcomes, dispatch_fallback = dispatched.outcomes, dispatched.fallback

        final_env = dict(env)
        if plan.mode is Mode.LOCAL_NO_REMOTE_CACHE:
            final_env.pop(CACHE_URL_ENV, None)
            final_env["NX_SKIP_REMOTE_CACHE"] = "true"
        _say(f"final pass here: nx {' '.join(invocation.argv())}")
        code, how = final_pass(workspace, invocation, final_env)
        print(report.final_table(graph, outcomes, how))
        _say(report.summary(how, outcomes) + f"; nx exited {code}")
        if args.scheduler:  # a farm to report to (reached now, or kept for later)
            mode, why = runlog.report_mode(plan.mode is Mode.DISTRIBUTED, plan.reason, dispatch_fallback)
            run_report = RunReport(runlog.new_run_id(), " ".join(invocation.argv())[:MAX_TEXT], commit, mode,
                                   why[:MAX_TEXT], started, time.time(), code,
                                   tuple(runlog.task_records(graph, outcomes, how)))
            line = runlog.deliver(dask_client, run_report, Outbox())
            if line:
                _say(line)
        return code
    finally:
        if dask_client is not None:
            close_client(dask_client)
