"""`.sops.yaml`: who may open which encrypted file.

Each agent's file opens for that agent and the operators only; the shared file opens for
every agent and the operators. `sops updatekeys` reads these rules; the files are named
`*.sops.env` so sops picks its dotenv format by itself.
"""

from __future__ import annotations

import re

from ..settings import FarmSettings


def agent_file(settings: FarmSettings, agent_name: str) -> str:
    return f"{settings.sops.agents_dir.rstrip('/')}/{agent_name}.sops.env"


def file_recipients(settings: FarmSettings) -> dict[str, list[str]]:
    """Encrypted file path (relative to the repository) -> its recipients, operators first."""
    operators = list(settings.sops.operator_recipients)
    files = {agent_file(settings, a.name): operators + [a.age_recipient] for a in settings.agents}
    files[settings.sops.shared_file] = operators + [a.age_recipient for a in settings.agents]
    return files


def sops_config(settings: FarmSettings) -> str:
    lines = ["# Written by nx-farm (components/render/sops_config.py) from the stack config; edit that instead.",
             "creation_rules:"]
    for path, recipients in file_recipients(settings).items():
        lines.append(f"  - path_regex: ^{re.escape(path)}$")
        lines.append(f"    age: {','.join(recipients)}")
    return "\n".join(lines) + "\n"
