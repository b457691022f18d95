"""`nxfarm`: the runtime's command line. Subcommands arrive with their issues
(`agent run`, `health`, `build`, ...); what exists today is listed by --help."""

from __future__ import annotations

import argparse
import sys

from . import __version__


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nxfarm", description="nx-farm runtime")
    parser.add_argument("--version", action="version", version=f"nxfarm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sops", help="keep a SOPS file in step with its recipients (see python -m nxfarm.sops -h)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "sops":
        from . import sops

        return sops.main(rest)
    return 2  # pragma: no cover - argparse exits first


if __name__ == "__main__":
    sys.exit(main())
