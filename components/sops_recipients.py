"""SopsRecipients: `.sops.yaml` and every encrypted env file, written by the real sops on the operator box."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import pulumi
from pulumi_command import local

from .render.sops_config import file_recipients, sops_config
from .settings import FarmSettings

# The project's virtualenv (Pulumi.yaml), relative to the repository, so the command text is the
# same on every operator's machine and does not show up as a change.
PYTHON = ".venv/bin/python"


@dataclass(frozen=True, kw_only=True)
class SopsRecipientsArgs:
    """+ settings: the validated stack config (recipients and file paths)
    + plaintexts: repository-relative file path -> secret dotenv text to encrypt into it
    + repo_root: where `.sops.yaml` and the files live
    """

    settings: FarmSettings
    plaintexts: dict[str, pulumi.Input[str]]
    repo_root: Path


def _slug(path: str) -> str:
    return path.replace("/", "-").removesuffix(".sops.env").strip("-.")


class SopsRecipients(pulumi.ComponentResource):
    ciphertexts: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: SopsRecipientsArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("nxfarm:index:SopsRecipients", name, None, opts)
        settings = args.settings
        config_path = settings.sops.config_file
        self.config = local.Command(
            f"{name}-config",
            create=f"install -m 0644 /dev/stdin {shlex.quote(config_path)}",
            update=f"install -m 0644 /dev/stdin {shlex.quote(config_path)}",
            stdin=sops_config(settings),
            dir=str(args.repo_root),
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["dir"]),
        )
        recipients = file_recipients(settings)
        self.ciphertexts = {}
        for path, plaintext in args.plaintexts.items():
            # The recipients are part of the command, so a membership change is an update, and
            # `nxfarm.sops sync` re-wraps (added) or rotates (removed); the plaintext is stdin only.
            sync = shlex.join([PYTHON, "-m", "nxfarm.sops", "sync", path, "--config", config_path,
                               *[arg for r in recipients[path] for arg in ("--recipient", r)]])
            command = local.Command(
                f"{name}-{_slug(path)}",
                create=sync,
                update=sync,
                delete=f"rm -f {shlex.quote(path)}",
                stdin=pulumi.Output.secret(plaintext),
                dir=str(args.repo_root),
                logging=local.Logging.STDERR,
                add_previous_output_in_env=False,
                # `dir` is where this checkout is; another operator's clone must not look like a change.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[self.config], ignore_changes=["dir"]),
            )
            self.ciphertexts[path] = command.stdout
        self.register_outputs({"files": sorted(self.ciphertexts)})
