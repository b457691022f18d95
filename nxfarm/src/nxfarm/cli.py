"""`nxfarm`: the runtime's command line, one subcommand per job."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def _parser() -> argparse.ArgumentParser:
    from .agent import worker
    from .build import command as build
    from . import scheduler

    parser = argparse.ArgumentParser(prog="nxfarm", description="nx-farm: Nx remote cache and build agents")
    parser.add_argument("--version", action="version", version=f"nxfarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    build_parser = sub.add_parser("build", help="run Nx tasks on the farm, then replay them here",
                                  epilog=build.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    build.add_arguments(build_parser)
    build_parser.set_defaults(run=build.run)

    agent = sub.add_parser("agent", help="this machine as a build agent").add_subparsers(dest="action", required=True)
    agent_run = agent.add_parser("run", help="serve the farm's tasks (a Dask worker with one checkout per slot)")
    worker.add_arguments(agent_run)
    agent_run.set_defaults(run=worker.run)

    sched = sub.add_parser("scheduler", help="the farm's task scheduler").add_subparsers(dest="action", required=True)
    sched_run = sched.add_parser("run", help="serve the farm's scheduler (mutual TLS, one address)")
    scheduler.add_arguments(sched_run)
    sched_run.set_defaults(run=scheduler.run)

    from .demo import command as demo

    demo_parser = sub.add_parser("demo", help="a whole farm on this machine: two builds of a sample workspace",
                                 description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.run)

    from . import discover, doctor, init

    doctor_parser = sub.add_parser("doctor", help="check prerequisites; print the fix for each failure",
                                   epilog=doctor.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    doctor.add_arguments(doctor_parser)
    doctor_parser.set_defaults(run=doctor.run)

    init_parser = sub.add_parser("init", help="configure an Nx workspace for the farm (idempotent; --dry-run)",
                                 description=init.__doc__, epilog=init.EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_arguments(init_parser)
    init_parser.set_defaults(run=init.run)

    discover_parser = sub.add_parser("discover", help="tailnet devices that could be agents, with the config to add them",
                                     epilog=discover.EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    discover.add_arguments(discover_parser)
    discover_parser.set_defaults(run=discover.run)

    from .health import command as health

    health_parser = sub.add_parser("health", help="check tailnet, cache and farm services; --heal restarts",
                                   epilog=health.HEALTH_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    health.add_health_arguments(health_parser)
    health_parser.set_defaults(run=health.run_health)
    restart = sub.add_parser("restart", help="restart this host's farm services (idempotent)")
    health.add_restart_arguments(restart)
    restart.set_defaults(run=health.run_restart)

    sub.add_parser("sops", help="keep a SOPS file in step with its recipients (nxfarm sops -h)", add_help=False)
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
