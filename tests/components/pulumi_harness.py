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
from dataclasses import dataclass, field
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
    custom: bool = True  # False for a ComponentResource
    # resource options the engine acts on, as sent in RegisterResource: retain_on_delete,
    # ignore_changes, delete_before_replace, replace_on_changes, replacement_trigger
    options: dict[str, Any] = field(default_factory=dict)


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


_MOCK_KEYS: dict[tuple[str, str], str] = {}


def mock_private_key(name: str, trigger: str) -> str:
    """A real key, the same for one (name, replacement trigger) for the whole test session, so
    reruns of the program see unchanged certificates, and a new secrets generation new ones."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if (name, trigger) not in _MOCK_KEYS:
        key = ec.generate_private_key(ec.SECP256R1())
        _MOCK_KEYS[(name, trigger)] = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()).decode()
    return _MOCK_KEYS[(name, trigger)]


_MOCK_TLS: dict[str, dict[str, Any]] = {}


def _mock_tls(typ: str, inputs: dict[str, Any], name: str, trigger: str) -> dict[str, Any]:
    """What the tls provider computes, computed for real (so deployed scheduler and agents can
    actually speak mutual TLS); the same inputs give the same outputs for the whole session
    (ECDSA signatures are randomized, so they are remembered, like provider state)."""
    seen = json.dumps([typ, name, trigger, inputs], sort_keys=True, default=str)
    if seen not in _MOCK_TLS:
        _MOCK_TLS[seen] = _compute_tls(typ, inputs, name, trigger)
    return _MOCK_TLS[seen]


def _compute_tls(typ: str, inputs: dict[str, Any], name: str, trigger: str) -> dict[str, Any]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    pem = lambda obj: obj.public_bytes(serialization.Encoding.PEM).decode()  # noqa: E731
    load_key = lambda text: serialization.load_pem_private_key(text.encode(), None)  # noqa: E731
    epoch = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    if typ == "tls:index/privateKey:PrivateKey":
        return {"privateKeyPem": mock_private_key(name, trigger)}
    # The subject as terraform-provider-tls builds it (internal/provider/common_cert.go,
    # createSubjectDistinguishedNames, as vendored in pulumi-terraform-bridge): a Go pkix.Name,
    # which encodes O, then OU, then CN.
    fields = ((NameOID.ORGANIZATION_NAME, "organization"), (NameOID.ORGANIZATIONAL_UNIT_NAME, "organizationalUnit"),
              (NameOID.COMMON_NAME, "commonName"))
    subject = x509.Name([x509.NameAttribute(oid, inputs["subject"][key]) for oid, key in fields
                         if inputs["subject"].get(key)]) if "subject" in inputs else None
    if typ == "tls:index/selfSignedCert:SelfSignedCert":
        key = load_key(inputs["privateKeyPem"])
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(int(hashlib.sha256(name.encode()).hexdigest()[:15], 16))
                .not_valid_before(epoch).not_valid_after(epoch + datetime.timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(key, hashes.SHA256()))
        return {"certPem": pem(cert)}
    if typ == "tls:index/certRequest:CertRequest":
        key = load_key(inputs["privateKeyPem"])
        return {"certRequestPem": pem(x509.CertificateSigningRequestBuilder().subject_name(subject)
                                      .sign(key, hashes.SHA256()))}
    if typ == "tls:index/locallySignedCert:LocallySignedCert":
        request = x509.load_pem_x509_csr(inputs["certRequestPem"].encode())
        ca = x509.load_pem_x509_certificate(inputs["caCertPem"].encode())
        cert = (x509.CertificateBuilder().subject_name(request.subject).issuer_name(ca.subject)
                .public_key(request.public_key()).serial_number(int(hashlib.sha256(name.encode()).hexdigest()[:15], 16))
                .not_valid_before(epoch).not_valid_after(epoch + datetime.timedelta(days=3650))
                .sign(load_key(inputs["caPrivateKeyPem"]), hashes.SHA256()))
        return {"certPem": pem(cert)}
    return {}


class RecordingMocks(pulumi.runtime.Mocks):
    """With `local_dir`, `local.Command` really runs its `create` (stdin included) in that
    directory, as the provider would in the repository, and returns the real stdout."""

    def __init__(self, local_dir: Path | None = None, local_env: dict[str, str] | None = None,
                 tailnet: Any = None) -> None:
        self.resources: list[Registered] = []
        self.tailnet = tailnet  # tests.standin.tailnet.Tailnet: answers the device lookups
        self.triggers: dict[str, str] = {}
        self.local_dir = local_dir
        self.local_env = local_env or {}

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        outputs = dict(args.inputs)
        if args.typ == "random:index/randomPassword:RandomPassword":
            outputs["result"] = mock_token(args.name, unwrap(args.inputs.get("keepers", {})))
        if args.typ.startswith("tls:"):
            outputs.update(_mock_tls(args.typ, unwrap(dict(args.inputs)), args.name, self.triggers.get(args.name, "")))
        if args.typ == "command:remote:Command":
            outputs.setdefault("stdout", "")
            outputs.setdefault("stderr", "")
        if args.typ == "command:local:Command" and self.local_dir is not None:
            import os
            import subprocess

            inputs = unwrap(dict(args.inputs))
            result = subprocess.run(["sh", "-c", inputs["create"]], input=inputs.get("stdin"), capture_output=True,
                                    text=True, cwd=self.local_dir, env={**os.environ, **self.local_env}, timeout=120)
            if result.returncode != 0:
                raise RuntimeError(f"local command {args.name} failed: {result.stderr[-1000:]}")
            outputs["stdout"], outputs["stderr"] = result.stdout, result.stderr
        elif args.typ == "command:local:Command":
            # stands in for the ciphertext: changes exactly when the command or its stdin changes
            seen = json.dumps([unwrap(args.inputs.get("create")), unwrap(args.inputs.get("stdin"))])
            outputs["stdout"] = "ENC[" + hashlib.sha256(seen.encode()).hexdigest()[:32] + "]"
            outputs.setdefault("stderr", "")
        urn = f"urn:pulumi:stack::nx-farm::{args.typ}::{args.name}"
        self.resources.append(Registered(args.typ, args.name, dict(args.inputs), urn, custom=args.custom))
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        # As the provider: an unknown device fails the program (at preview too), never a made-up answer.
        if args.token == "tailscale:index/getDevice:getDevice":
            device = self.tailnet.get_device(hostname=args.args.get("hostname"), name=args.args.get("name"))
            return {**device, "waitFor": args.args.get("waitFor")}
        if args.token == "tailscale:index/getDevices:getDevices":
            return {"devices": self.tailnet.get_devices(args.args.get("namePrefix")), "id": "devices",
                    "namePrefix": args.args.get("namePrefix")}
        raise NotImplementedError(f"no stand-in for invoke {args.token}")


class RecordingMonitor(pulumi.runtime.mocks.MockMonitor):
    """Also records each registration's dependencies, which the mocks' callback does not see."""

    def __init__(self, mocks: RecordingMocks) -> None:
        super().__init__(mocks)
        self.dependencies: dict[str, frozenset[str]] = {}
        self.options: dict[str, dict[str, Any]] = {}

    def RegisterResource(self, request):  # noqa: N802, ANN001, ANN201 - the gRPC method name
        urns = set(request.dependencies)
        for deps in request.propertyDependencies.values():
            urns.update(deps.urns)
        self.dependencies[request.name] = frozenset(urn.rsplit("::", 1)[-1] for urn in urns)
        options: dict[str, Any] = {
            "retain_on_delete": request.retainOnDelete,
            "ignore_changes": list(request.ignoreChanges),
            "delete_before_replace": request.deleteBeforeReplace,
            "replace_on_changes": [key.removesuffix("[*]") for key in request.replaceOnChanges],
        }
        if request.HasField("replacement_trigger"):
            self.mocks.triggers[request.name] = str(request.replacement_trigger)
            options["replacement_trigger"] = str(request.replacement_trigger)
        self.options[request.name] = options
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


def run_program(config: dict[str, Any], secret_config: dict[str, str], local_dir: Path | None = None,
                local_env: dict[str, str] | None = None, tailnet: Any = None, preview: bool = False) -> ProgramRun:
    """Run `__main__.py` once with this stack config (camelCase keys without the project prefix).
    `local_dir`: execute local commands for real there (a scratch stand-in for the repository).
    `tailnet`: the tailnet stand-in that device lookups consult; by default one where every
    host of the config is an enrolled, untagged device at its `host` address."""
    from tests.standin.tailnet import enrolled

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    mocks = RecordingMocks(local_dir, local_env, tailnet if tailnet is not None else enrolled(config))
    monitor = RecordingMonitor(mocks)
    pulumi.runtime.set_mocks(mocks, project="nx-farm", stack="test", preview=preview, monitor=monitor)
    values = {f"nx-farm:{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()}
    values.update({f"nx-farm:{k}": v for k, v in secret_config.items()})
    pulumi.runtime.set_all_config(values, secret_keys=[f"nx-farm:{k}" for k in secret_config])
    error: BaseException | None = None
    outputs: dict[str, Any] = {}

    exports: dict[str, Any] = {}
    real_export = pulumi.export

    def record_export(name: str, value: Any) -> None:
        exports[name] = pulumi.Output.from_input(value)
        real_export(name, value)

    @pulumi.runtime.test
    def program() -> pulumi.Output[Any]:
        pulumi.export = record_export
        try:
            runpy.run_path(str(ROOT / "__main__.py"), run_name="__pulumi_main__")
        finally:
            pulumi.export = real_export

        async def resolve(name: str, output: pulumi.Output[Any]) -> None:
            value = await output.future()
            secret = await output.is_secret()
            outputs[name] = {SECRET_KEY: SECRET_SIG, "value": value} if secret else value

        import asyncio as _asyncio

        return pulumi.Output.from_input(_asyncio.ensure_future(
            _asyncio.gather(*(resolve(n, o) for n, o in exports.items()))))

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
        resource.options = monitor.options.get(resource.name, {})
    return ProgramRun(mocks.resources, outputs, error)
