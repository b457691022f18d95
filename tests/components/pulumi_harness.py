"""Run the whole Pulumi program (`__main__.py`) under Pulumi's mocks and record what it registers.

What this covers: the program's own logic (validation, resource graph, inputs, parenting,
secrecy of inputs). What it does not: the engine's diff, the providers' Check/Diff and SSH
code, and `pulumi preview` itself (the CLI cannot be installed here).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import runpy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime import rpc

ROOT = Path(__file__).resolve().parents[2]
SECRET_KEY, SECRET_SIG = rpc._special_sig_key, rpc._special_secret_sig


@dataclass
class Registered:
    typ: str
    name: str
    inputs: dict[str, Any]
    urn: str
    depends_on: frozenset[str] = frozenset()  # names of the resources it depends on (explicit and by input)


def is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(SECRET_KEY) == SECRET_SIG


def unwrap(value: Any) -> Any:
    """Inputs with secret wrappers removed (to compare values across runs)."""
    if is_secret(value):
        return unwrap(value["value"])
    if isinstance(value, dict):
        return {k: unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap(v) for v in value]
    if isinstance(value, (pulumi.FileArchive, pulumi.FileAsset)):
        return (type(value).__name__, value.path)  # assets compare by identity otherwise
    if isinstance(value, pulumi.StringAsset):
        return ("StringAsset", value.text)
    return value


def plain_strings(value: Any) -> list[str]:
    """Every string reachable without going through a secret wrapper."""
    if is_secret(value):
        return []
    if isinstance(value, dict):
        return [s for v in value.values() for s in plain_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in plain_strings(v)]
    if isinstance(value, str):
        return [value]
    if hasattr(value, "text"):  # StringAsset
        return [value.text]
    return []


def mock_token(resource_name: str, keepers: dict[str, Any]) -> str:
    """The value the mock gives a RandomPassword: deterministic, and different per keepers."""
    seed = f"{resource_name}|{json.dumps(keepers, sort_keys=True)}"
    return "tok" + hashlib.sha256(seed.encode()).hexdigest()[:40]


class RecordingMocks(pulumi.runtime.Mocks):
    def __init__(self) -> None:
        self.resources: list[Registered] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = mock_token(args.name, unwrap(args.inputs.get("keepers", {})))
        if args.typ == "command:remote:Command":
            outputs.setdefault("stdout", "")
            outputs.setdefault("stderr", "")
        if args.typ == "command:local:Command":
            # stands in for the ciphertext: changes exactly when the command or its stdin changes
            seen = json.dumps([unwrap(args.inputs.get("create")), unwrap(args.inputs.get("stdin"))])
            outputs["stdout"] = "ENC[" + hashlib.sha256(seen.encode()).hexdigest()[:32] + "]"
            outputs.setdefault("stderr", "")
        urn = f"urn:pulumi:stack::nx-farm::{args.typ}::{args.name}"
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs), urn))
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        if args.token == "tailscale:index/getDevice:getDevice":
            hostname = args.args["hostname"]
            return {"nodeId": f"node-{hostname}", "name": hostname, "addresses": [], "tags": []}
        return {}


class RecordingMonitor(pulumi.runtime.mocks.MockMonitor):
    """Also records each registration's dependencies, which the mocks' callback does not see."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.dependencies: dict[str, frozenset[str]] = {}

    def RegisterResource(self, request):  # noqa: N802, ANN001, ANN201 - the gRPC method name
        urns = set(request.dependencies)
        for deps in request.propertyDependencies.values():
            urns.update(deps.urns)
        self.dependencies[request.name] = frozenset(urn.rsplit("::", 1)[-1] for urn in urns)
        return super().RegisterResource(request)


@dataclass
class ProgramRun:
    resources: list[Registered]
    outputs: dict[str, Any]
    error: BaseException | None

    def by_name(self) -> dict[str, Registered]:
        return {r.name: r for r in self.resources}

    def of_type(self, typ: str) -> list[Registered]:
        return [r for r in self.resources if r.typ == typ]


def run_program(config: dict[str, Any], secret_config: dict[str, str]) -> ProgramRun:
    """Run `__main__.py` once with this stack config (camelCase keys without the project prefix)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = RecordingMocks()
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="nx-farm", stack="test", preview=False, monitor=monitor)
    values = {f"nx-farm:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    values.update({f"nx-farm:{k}": v for k, v in secret_config.items()})
    pulumi.runtime.set_all_config(values, secret_keys=[f"nx-farm:{k}" for k in secret_config])
    error: BaseException | None = None
    outputs: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> None:
        runpy.run_path(str(ROOT / "__main__.py"), run_name="__pulumi_main__")

    try:
        program()
    except Exception as exc:  # RunError from an invalid config
        error = exc
    finally:
        pulumi.runtime.set_all_config({})
        loop.close()
        asyncio.set_event_loop(None)
    for resource in mocks.resources:
        resource.depends_on = monitor.dependencies.get(resource.name, frozenset())
    return ProgramRun(mocks.resources, outputs, error)
