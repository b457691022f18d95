"""`nxfarm`: the runtime's command line, one subcommand per job."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import __version__


def _command(sub, name: str, help: str, add_arguments: Callable, run: Callable,  # noqa: ANN001, A002
             epilog: str | None = None, description: str | None = None) -> None:
    parser = sub.add_parser(name, help=help, description=description, epilog=epilog,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    parser.set_defaults(run=run)


def _parser() -> argparse.ArgumentParser:
    from . import discover, doctor, init, scheduler, status
    from .agent import worker
    from .build import command as build
    from .demo import command as demo
    from .health import command as health
    from .localfarm import command as localfarm

    parser = argparse.ArgumentParser(prog="nxfarm", description="nx-farm: Nx remote cache and build agents")
    parser.add_argument("--version", action="version", version=f"nxfarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "build", "run Nx tasks on the farm, then replay them here", build.add_arguments, build.run,
             epilog=build.EPILOG)
    agent = sub.add_parser("agent", help="this machine as a build agent").add_subparsers(dest="action", required=True)
    _command(agent, "run", "serve the farm's tasks (a Dask worker with one checkout per slot)",
             worker.add_arguments, worker.run, epilog=worker.EPILOG)
    sched = sub.add_parser("scheduler", help="the farm's task scheduler").add_subparsers(dest="action", required=True)
    _command(sched, "run", "serve the farm's scheduler (mutual TLS, one address)", scheduler.add_arguments,
             scheduler.run, epilog=scheduler.EPILOG)
    _command(sub, "demo", "a whole farm on this machine: two builds of a sample workspace", demo.add_arguments,
             demo.run, description=demo.__doc__, epilog=demo.EPILOG)
    _command(sub, "farm", "a farm on this machine for your own workspaces: up, down, env", localfarm.add_arguments,
             localfarm.run, description=localfarm.__doc__, epilog=localfarm.EPILOG)
    _command(sub, "status", "the farm as this machine sees it: cache, scheduler, each agent (--json)",
             status.add_arguments, status.run, epilog=status.EPILOG, description=status.__doc__)
    _command(sub, "doctor", "check prerequisites; print the fix for each failure", doctor.add_arguments, doctor.run,
             epilog=doctor.EPILOG)
    _command(sub, "init", "configure an Nx workspace for the farm (idempotent; --dry-run)", init.add_arguments,
             init.run, epilog=init.EPILOG, description=init.__doc__)
    _command(sub, "discover", "tailnet devices that could be agents, with the config to add them",
             discover.add_arguments, discover.run, epilog=discover.EPILOG)
    _command(sub, "health", "check tailnet, cache and farm services; --heal restarts", health.add_health_arguments,
             health.run_health, epilog=health.HEALTH_EPILOG)
    _command(sub, "restart", "restart this host's farm services (idempotent)", health.add_restart_arguments,
             health.run_restart, epilog=health.RESTART_EPILOG)
    sub.add_parser("sops", help="SOPS files in step with their recipients; keygen: a new age key (nxfarm sops -h)",
                   add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["sops"]:
        from . import sops

        return sops.main(argv[1:])
    args = _parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
